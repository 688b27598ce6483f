"""Nucleus detection in microscopy (Xing et al. 2019): proximity-map regression with an
encoder-decoder, peaks, one-to-one matching, synthetic microscopy, and transfer across styles."""
