"""The team dashboard: every node, run and dollar from the run store, served with Panel (`gaudi-nb dashboard`) or shown in a notebook."""
from __future__ import annotations

from typing import Any, Optional


def show(store: Optional[str] = None, **kwargs: Any) -> Any:
    """The dashboard's pages inside a notebook (the same views `gaudi-nb dashboard` serves), kept live."""
    from .app import notebook_view

    return notebook_view(store, **kwargs)


__all__ = ["show"]
