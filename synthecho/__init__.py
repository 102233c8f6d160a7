"""synthecho: published synthetic echocardiography corpora (image-mask-prompt triplets)."""

__version__ = "0.1.0"
