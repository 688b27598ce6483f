"""Stepwise fine-tuning (Qu et al. 2018): intermediate datasets and recipes of stages.

Light on purpose (the command line reads these names without importing the builders).
"""

INTERMEDIATE_METHODS = ("clusters", "synthetic")
DESCRIPTORS = ("handcrafted", "embedding", "both")
