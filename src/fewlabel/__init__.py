"""fewlabel: trustworthy image models when labels are scarce."""

__version__ = "0.1.0"

from .api import Predictor, TrainResult, evaluate, list_datasets, list_models, load, train
from .errors import FewlabelError

__all__ = ["FewlabelError", "Predictor", "TrainResult", "evaluate", "list_datasets", "list_models", "load", "train"]
