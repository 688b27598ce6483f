"""Semi-supervised methods: tri-net (Chen et al. 2018) and its baselines on one engine.

``options`` (their config sections) is light; the rest imports torch.
"""
