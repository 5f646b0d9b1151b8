"""Training and evaluation data: loading and validation, the embedded default set, collation."""
