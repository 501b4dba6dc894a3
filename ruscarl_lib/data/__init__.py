"""Rubric data: the data model, reading and writing datasets, HealthBench splits, statistics.

The embedded sample (`sample_medical.jsonl`) lives here too, so the CPU default needs no download.
"""
