"""Distillation into a smaller student (the ``distill`` method): cross-entropy on the labelled
images plus latent-geometry-graph distillation (Lassance et al. 2021), Hinton's KD and relational
KD (Park et al. 2019) on the labelled images and an unlabeled pool, each from a teacher run."""
