"""Notebook views over the API: IPython magics, the live run panel, the device grid and the launcher widget."""
from __future__ import annotations

from typing import Any


def launcher(**defaults: Any) -> Any:
    """A form to start a run (target, model, dataset, devices, precision, budget, price) whose panel appears below it."""
    from .form import Launcher

    return Launcher(**defaults)


def show(run: Any, mode: Any = None, **kwargs: Any) -> Any:
    """Show a run's panel: live widgets in a frontend, a final image and summary when headless."""
    from .panel import show as show_panel

    return show_panel(run, mode=mode, **kwargs)


__all__ = ["launcher", "show"]
