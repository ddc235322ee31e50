"""gaudi_nb: train on Intel Gaudi from Jupyter; one event stream from the node to every view.

The public face is lazy (PEP 562): the agent and every rank import gaudi_nb's engine
modules without paying for the API, the store (SQLAlchemy) or the batch engine.
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Any

# Eager, not lazy: importing any gaudi_nb.batch.* module sets the package attribute `batch` to the
# subpackage, which would hide a lazy name; the function's module costs ~25 ms of standard library.
from .batch.execute import batch
from .version import __version__

# public name -> (module, attribute); attribute None means the module itself
_EXPORTS = {
    "GaudiNbError": (".errors", "GaudiNbError"),
    "MissingExtraError": (".errors", "MissingExtraError"),
    "NotFoundError": (".errors", "NotFoundError"),
    "SpecError": (".errors", "SpecError"),
    "NodeSpec": (".spec", "NodeSpec"),
    "RunSpec": (".spec", "RunSpec"),
    "Run": (".api", "Run"),
    "get_run": (".api", "get_run"),
    "resume": (".api", "resume"),
    "runs": (".api", "runs"),
    "train": (".api", "train"),
    "attach": (".nodes.attach", "attach"),
    "provision": (".nodes.provision", "provision"),
    "down": (".nodes.provision", "down"),
    "launcher": (".notebook", "launcher"),
}

__all__ = [
    "GaudiNbError",
    "MissingExtraError",
    "NodeSpec",
    "NotFoundError",
    "Run",
    "RunSpec",
    "SpecError",
    "__version__",
    "attach",
    "batch",
    "down",
    "get_run",
    "launcher",
    "load_ipython_extension",
    "resume",
    "provision",
    "runs",
    "train",
]

if TYPE_CHECKING:  # what IDEs and mypy see
    from .api import Run, get_run, resume, runs, train
    from .errors import GaudiNbError, MissingExtraError, NotFoundError, SpecError
    from .nodes.attach import attach
    from .nodes.provision import down, provision
    from .notebook import launcher  # type: ignore[no-redef]  # the function; mypy also sees the module of that name
    from .spec import NodeSpec, RunSpec


def __getattr__(name: str) -> Any:
    try:
        module_name, attribute = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'gaudi_nb' has no attribute {name!r}") from None
    module = importlib.import_module(module_name, __name__)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list:
    """The public names, and the rooms (submodules) already imported."""
    rooms = {name for name, value in globals().items() if isinstance(value, ModuleType) and not name.startswith("_")}
    return sorted(set(__all__) | rooms)


def load_ipython_extension(ipython):  # type: ignore[no-untyped-def]
    """%load_ext gaudi_nb"""
    from .notebook.magics import load_ipython_extension as load

    load(ipython)
