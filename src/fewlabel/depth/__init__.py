"""Monocular depth from rendered endoscopy (Mahmood et al. 2018)."""
