"""embedtune: fine-tune text-embedding models with contrastive learning."""

__version__ = "0.1.0"
