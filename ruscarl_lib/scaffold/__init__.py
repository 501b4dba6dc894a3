"""Rubric scaffolds (METHOD.md section 4): the schedules that set each rollout's share of the
rubric, the choice of criteria, and how they are written into the prompt.
"""
