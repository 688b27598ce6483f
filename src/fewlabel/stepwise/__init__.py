"""Stepwise fine-tuning (Qu et al. 2018): intermediate datasets and, later, recipes of stages."""
