"""Notebooks as runs: papermill execution with typed parameters, live cell events and a reproducibility manifest.

    from gaudi_nb.batch import batch, batch_sweep, compare
    run = batch("notebooks/04_batch_sweep.ipynb", parameters={"learning_rate": 1e-3})
    runs = batch_sweep("notebooks/04_batch_sweep.ipynb", parameters={"learning_rate": "1e-4,3e-4,1e-3"})
    compare(runs)

Inside a notebook, `gaudi_nb.batch.record(eval_loss=...)` records a result for compare().
"""
import sys
import types

from .execute import NotebookFailed, batch, batch_sweep, compare, compare_table, junit_xml, prepare, record, write_junit
from .manifest import build_manifest
from .parameters import Parameter, expand_grid, notebook_parameters, validate

__all__ = [
    "NotebookFailed",
    "Parameter",
    "batch",
    "batch_sweep",
    "build_manifest",
    "compare",
    "compare_table",
    "expand_grid",
    "junit_xml",
    "notebook_parameters",
    "prepare",
    "record",
    "validate",
    "write_junit",
]


class _CallableModule(types.ModuleType):
    """`gaudi_nb.batch(notebook, ...)` runs a notebook, while `gaudi_nb.batch.record` and
    friends stay importable: the public API names a function and DESIGN names a room."""

    def __call__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return batch(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
