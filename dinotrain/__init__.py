"""dinotrain: pretrain medical image encoders with image-only self-supervision (RAD-DINO recipe)."""

__version__ = "0.1.0"
