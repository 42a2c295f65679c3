"""Model definitions: the Vision Transformer (vit.py)."""
