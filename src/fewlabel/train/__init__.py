"""Supervised fine-tuning: the Lightning module, strategies as phase plans, and the engine."""
