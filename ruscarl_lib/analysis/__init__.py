"""Analysis: tables over training runs and evaluations, and the figures drawn from them.
"""
