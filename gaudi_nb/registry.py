"""One generic name → implementation registry (targets, launchers, trainers, telemetry sources, presets)."""
from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any, Dict, Generic, Iterator, List, Optional, TypeVar

from .errors import NotFoundError

T = TypeVar("T")


class Registry(Generic[T]):
    """Case-insensitive names with aliases; third parties add entries through the
    entry-point group ``gaudi_nb.<kind>``; a miss lists the valid names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: Dict[str, T] = {}
        self._aliases: Dict[str, str] = {}
        self._loaded_entry_points = False

    def register(self, name: str, obj: Optional[T] = None, *, aliases: tuple = ()) -> Any:
        """register(name, obj) adds obj; register(name) is a decorator."""
        def add(value: T) -> T:
            key = name.lower()
            self._items[key] = value
            for alias in aliases:
                self._aliases[alias.lower()] = key
            return value

        return add(obj) if obj is not None else add

    def _load_entry_points(self) -> None:
        if self._loaded_entry_points:
            return
        self._loaded_entry_points = True
        for ep in entry_points(group=f"gaudi_nb.{self.kind}"):
            if ep.name.lower() not in self._items:
                self._items[ep.name.lower()] = ep.load()

    def __contains__(self, name: str) -> bool:
        self._load_entry_points()
        key = name.lower()
        return key in self._items or key in self._aliases

    def get(self, name: str) -> T:
        self._load_entry_points()
        key = self._aliases.get(name.lower(), name.lower())
        if key not in self._items:
            raise NotFoundError(f"unknown {self.kind} '{name}': choose one of {', '.join(self.names())}")
        return self._items[key]

    def names(self) -> List[str]:
        self._load_entry_points()
        return sorted(self._items)

    def items(self) -> Iterator[tuple]:
        self._load_entry_points()
        return iter(sorted(self._items.items()))
