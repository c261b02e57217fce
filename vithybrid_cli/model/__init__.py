"""The network: configs, BiT backbone, ViT-Hybrid, fused kernels, checkpoints, the family, heads."""
