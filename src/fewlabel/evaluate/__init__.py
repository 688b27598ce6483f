"""Metrics of a classifier's predicted probabilities (``metrics``), their spread over seeds, and
predictions.csv (``predictions``). Light on purpose: ``fewlabel.evaluate`` is also the name of
a function of the package root."""
