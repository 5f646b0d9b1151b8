"""Contrastive losses: functions of embeddings, one per file, chosen by the `loss` config group.

Every loss takes ``queries`` (batch, dim) and ``documents`` (batch * (1 + k), dim), where the
first ``batch`` rows of ``documents`` are the positives in query order and the rest are hard
negatives, and returns a scalar. Embeddings arrive L2-normalised, so dot products are cosines.
"""
