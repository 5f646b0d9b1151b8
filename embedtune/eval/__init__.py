"""Evaluation: retrieval and STS metrics, the loops that score a model, embedding-space diagnostics and plots."""
