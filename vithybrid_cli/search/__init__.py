"""Searching embeddings: reading `embed` outputs (vectors.py), nearest neighbours by blocked
exact products or an approximate index (index.py), duplicate groups (grouping.py)."""
