"""Contrastive losses: functions of embeddings, one per file, chosen by the `loss` config group.

Every loss is called as ``loss(queries, documents, info, params)``:

- ``queries`` (batch, dim) and ``documents`` (batch * (1 + k), dim), L2-normalised, where the
  first ``batch`` rows of ``documents`` are the positives in query order and the remaining rows
  are the hard negatives, query by query (query 0's k negatives, then query 1's, ...);
- ``info``: a `BatchInfo` with what some losses need besides embeddings (text identities,
  labels, gold or teacher scores);
- ``params``: learnable scalars that live on the model (``logit_scale`` = log(1/tau) when the
  temperature is learnable, ``sigmoid_bias`` for the sigmoid loss).

A loss may define ``initial_params()`` to ask for learnable scalars of its own.
"""
