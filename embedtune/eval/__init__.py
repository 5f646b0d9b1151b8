"""Evaluation: retrieval metrics and the loops that embed a benchmark and score a model."""
