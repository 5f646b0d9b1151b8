"""Model soups: merge checkpoints of one architecture, or their task vectors against a common
parent, by SLERP, linear interpolation, TIES, DARE or Model Stock.

``methods`` holds one plain function per method on tensors; ``soup`` runs them in row blocks
over safetensors files (`embedtune merge` is `embedtune.cli.merge`).
"""
