"""Notebooks as runs: papermill execution with typed parameters, live cell events and a reproducibility manifest.

    import gaudi_nb
    run = gaudi_nb.batch("notebooks/04_batch_sweep.ipynb", parameters={"learning_rate": 1e-3})

    from gaudi_nb.batch import batch, batch_sweep, compare, record
    runs = batch_sweep("notebooks/04_batch_sweep.ipynb", parameters={"learning_rate": "1e-4,3e-4,1e-3"})
    compare(runs)

Inside a notebook, `from gaudi_nb.batch import record` then `record(eval_loss=...)` records a
result for compare().

`gaudi_nb.batch` at the package's top level is meant to be the function `batch`: gaudi_nb/__init__.py
binds `from .batch.execute import batch` eagerly (importing this room is cheap: no
papermill, store or torch until a notebook runs). Eagerly, because importing any `gaudi_nb.batch.*`
sets the package attribute `gaudi_nb.batch` to this module, so a lazy PEP 562 name would be
shadowed whenever the room was imported first. The room's other names are imported from here.
"""
from .execute import NotebookFailed, batch, batch_sweep, prepare
from .manifest import build_manifest
from .parameters import Parameter, expand_grid, notebook_parameters, validate
from .results import compare, compare_table, junit_xml, record, write_junit

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

