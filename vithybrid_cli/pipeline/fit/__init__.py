"""Fitting a head of your own labels: fit_head (fitting.py) and its parts, one module each.

examples.py   labeled images from label folders or a labels file; the train/validation split
cache.py      the embedding cache (by file identity and settings) and embedding the examples
solver.py     multinomial logistic regression (L-BFGS), its probabilities and metrics
fitting.py    fit_head: collect, embed, split, regress, evaluate -> a Head and a FitReport
"""

from .cache import default_cache_dir
from .examples import FitError
from .fitting import FitReport, fit_head

__all__ = ["FitError", "FitReport", "default_cache_dir", "fit_head"]
