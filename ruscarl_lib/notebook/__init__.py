"""What the notebooks use: the first-cell setup, widgets, figures, and batch runs with reports.
"""
