"""Audits of a trained model: calibration and saliency (pure functions over tensors)."""
