"""Parameter sweeps: expanding a sweep file into runs, running them (here or on Ray), seed
statistics and the sweep report.
"""
