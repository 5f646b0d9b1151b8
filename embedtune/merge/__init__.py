"""Model soups: merge checkpoints of one architecture by SLERP or linear interpolation.

``methods`` holds one plain function per method on single tensors; ``soup`` runs them tensor by
tensor over safetensors files (`embedtune merge` is `embedtune.cli.merge`).
"""
