"""Evaluation: generate answers, grade them, report scores; Best-of-N and novelty on top.
"""
