"""gaudi_nb: train on Intel Gaudi from Jupyter; one event stream from the node to every view."""

from . import batch
from .api import Run, get_run, runs, train
from .errors import GaudiNbError, MissingExtraError, NotFoundError, SpecError
from .notebook import launcher
from .spec import NodeSpec, RunSpec

__version__ = "0.1.0"

__all__ = [
    "GaudiNbError",
    "MissingExtraError",
    "NodeSpec",
    "NotFoundError",
    "Run",
    "RunSpec",
    "SpecError",
    "__version__",
    "batch",
    "get_run",
    "launcher",
    "load_ipython_extension",
    "runs",
    "train",
]


def load_ipython_extension(ipython):  # type: ignore[no-untyped-def]
    """%load_ext gaudi_nb"""
    from .notebook.magics import load_ipython_extension as load

    load(ipython)
