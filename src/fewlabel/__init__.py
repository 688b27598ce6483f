"""fewlabel: trustworthy image models when labels are scarce.

The package root stays light: ``import fewlabel`` loads torch and Lightning only when one of
the functions below is first called (the command line starts at once).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# The subpackages named like the functions below are imported first (their __init__ is light):
# importing them later would rebind ``fewlabel.train`` / ``fewlabel.evaluate`` to the package.
from . import evaluate as _evaluate_package  # noqa: F401
from . import train as _train_package  # noqa: F401
from ._version import __version__
from .errors import FewlabelError

if TYPE_CHECKING:  # pragma: no cover
    from .api import Predictor, TrainResult

__all__ = [
    "FewlabelError",
    "Predictor",
    "TrainResult",
    "__version__",
    "audit_infoplane",
    "audit_uap",
    "detect_nuclei",
    "evaluate",
    "export",
    "list_datasets",
    "list_models",
    "load",
    "nuclei_transfer",
    "quantize",
    "train",
    "train_nuclei",
]


def train(*args: Any, **kwargs: Any):
    """See :func:`fewlabel.api.train`."""
    from .api import train as run

    return run(*args, **kwargs)


def train_nuclei(*args: Any, **kwargs: Any):
    """See :func:`fewlabel.api.train_nuclei`."""
    from .api import train_nuclei as run

    return run(*args, **kwargs)


def detect_nuclei(*args: Any, **kwargs: Any) -> dict:
    """See :func:`fewlabel.api.detect_nuclei`."""
    from .api import detect_nuclei as run

    return run(*args, **kwargs)


def nuclei_transfer(*args: Any, **kwargs: Any) -> dict:
    """See :func:`fewlabel.api.nuclei_transfer`."""
    from .api import nuclei_transfer as run

    return run(*args, **kwargs)


def quantize(*args: Any, **kwargs: Any):
    """See :func:`fewlabel.api.quantize`."""
    from .api import quantize as run

    return run(*args, **kwargs)


def export(*args: Any, **kwargs: Any) -> dict:
    """See :func:`fewlabel.api.export`."""
    from .api import export as run

    return run(*args, **kwargs)


def evaluate(*args: Any, **kwargs: Any) -> dict:
    """See :func:`fewlabel.api.evaluate`."""
    from .api import evaluate as run

    return run(*args, **kwargs)


def audit_uap(*args: Any, **kwargs: Any) -> dict:
    """See :func:`fewlabel.audit.uap_audit.audit_uap`."""
    from .audit.uap_audit import audit_uap as run

    return run(*args, **kwargs)


def audit_infoplane(*args: Any, **kwargs: Any) -> dict:
    """See :func:`fewlabel.audit.infoplane_audit.audit_infoplane`."""
    from .audit.infoplane_audit import audit_infoplane as run

    return run(*args, **kwargs)


def load(*args: Any, **kwargs: Any):
    """See :func:`fewlabel.api.load`."""
    from .api import load as run

    return run(*args, **kwargs)


def list_models(pattern: str = "") -> list[dict]:
    """See :func:`fewlabel.api.list_models`."""
    from .api import list_models as run

    return run(pattern)


def list_datasets() -> list[dict]:
    """See :func:`fewlabel.api.list_datasets`."""
    from .api import list_datasets as run

    return run()


def __getattr__(name: str) -> Any:
    if name in ("Predictor", "TrainResult"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'fewlabel' has no attribute '{name}'")
