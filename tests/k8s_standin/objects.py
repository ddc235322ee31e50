"""The stand-in's object store: what etcd and the API server's registry keep, by the API conventions.

Every object has metadata.name, namespace (for namespaced kinds), uid, creationTimestamp and a
resourceVersion taken from one counter that every write moves on. A list answers the items and
the list's resourceVersion; a watch from a resourceVersion sends every change after it (ADDED,
MODIFIED, DELETED, each with the object as it was then), so a client whose watch dropped goes on
from the last version it saw without missing or repeating a change.
"""
from __future__ import annotations

import copy
import threading
import time
import uuid
from typing import Any, Dict, Iterator, List, Optional, Tuple

Obj = Dict[str, Any]
Key = Tuple[str, str, str]  # (resource, namespace, name); namespace "" for cluster-scoped


def now_iso(t: Optional[float] = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if t is None else t))


def matches(obj: Obj, labels: str = "", fields: str = "") -> bool:
    """labelSelector / fieldSelector with equality terms (k=v, k==v, k!=v), what the client sends."""
    for selector, lookup in ((labels, lambda k: (obj.get("metadata", {}).get("labels") or {}).get(k)), (fields, lambda k: _field(obj, k))):
        for term in filter(None, (t.strip() for t in (selector or "").split(","))):
            if "!=" in term:
                key, value = term.split("!=", 1)
                if lookup(key.strip()) == value.strip():
                    return False
            else:
                key, value = term.replace("==", "=").split("=", 1)
                if str(lookup(key.strip())) != value.strip():
                    return False
    return True


def _field(obj: Obj, dotted: str) -> Any:
    value: Any = obj
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


class Objects:
    """Objects by (resource, namespace, name), their history for watches, and a condition to wait on."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.items: Dict[Key, Obj] = {}
        self.history: List[Tuple[int, str, str, Obj]] = []  # (version, resource, type, object)
        self.version = 1000

    def _record(self, resource: str, kind: str, obj: Obj) -> None:
        self.version += 1
        if kind != "DELETED":
            obj["metadata"]["resourceVersion"] = str(self.version)
        self.history.append((self.version, resource, kind, copy.deepcopy(obj)))
        self.changed.notify_all()

    def create(self, resource: str, namespace: str, obj: Obj) -> Obj:
        with self.lock:
            meta = obj.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            key = (resource, namespace, meta["name"])
            if key in self.items:
                raise KeyError(meta["name"])
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=now_iso())
            if namespace:
                meta["namespace"] = namespace
            self.items[key] = obj
            self._record(resource, "ADDED", obj)
            return copy.deepcopy(obj)

    def get(self, resource: str, namespace: str, name: str) -> Optional[Obj]:
        with self.lock:
            obj = self.items.get((resource, namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def update(self, resource: str, namespace: str, name: str, change: Any) -> Optional[Obj]:
        """change(obj) edits the stored object in place (the API server's read-modify-write)."""
        with self.lock:
            obj = self.items.get((resource, namespace, name))
            if obj is None:
                return None
            before = copy.deepcopy(obj)
            change(obj)
            if obj != before:  # as the API server: a write that changes nothing is no new version and no watch event
                self._record(resource, "MODIFIED", obj)
            return copy.deepcopy(obj)

    def delete(self, resource: str, namespace: str, name: str) -> Optional[Obj]:
        with self.lock:
            obj = self.items.pop((resource, namespace, name), None)
            if obj is not None:
                self._record(resource, "DELETED", obj)
            return copy.deepcopy(obj) if obj is not None else None

    def list(self, resource: str, namespace: Optional[str], labels: str = "", fields: str = "") -> Tuple[List[Obj], str]:
        with self.lock:
            found = [copy.deepcopy(o) for (r, ns, _), o in sorted(self.items.items()) if r == resource and namespace in (None, ns) and matches(o, labels, fields)]
            return found, str(self.version)

    def watch(self, resource: str, namespace: Optional[str], since: Optional[str], labels: str, fields: str, timeout_s: float) -> Iterator[Tuple[str, Obj]]:
        """Changes after `since` (every existing object as ADDED when not given), until timeout_s."""
        deadline = time.monotonic() + timeout_s
        with self.lock:
            if since in (None, "", "0"):
                position = self.version
                items, _ = self.list(resource, namespace, labels, fields)
                pending = [("ADDED", o) for o in items]
            else:
                position, pending = int(since), []
        yield from pending
        while time.monotonic() < deadline:
            with self.lock:
                fresh = [(v, k, o) for v, r, k, o in self.history if v > position and r == resource]
                if not fresh:
                    self.changed.wait(min(1.0, max(0.0, deadline - time.monotonic())))
                    continue
            for version, kind, obj in fresh:
                position = version
                ns = obj.get("metadata", {}).get("namespace", "")
                if namespace in (None, ns) and matches(obj, labels, fields):
                    yield kind, obj
