"""JSON text in and out of the store and the event streams, through orjson (a fleet's reader decodes
and encodes thousands of events a second; orjson does it several times faster than the json module).

What the json module does differently, kept here: a NaN or an infinity (a diverged loss, written by
an EventWriter's json.dumps) is read as a float, and written to the store as null, because
PostgreSQL's JSON refuses it.
"""
from __future__ import annotations

import json
import math
from typing import Any, Union

import orjson

_OPTIONS = orjson.OPT_NON_STR_KEYS  # a dict keyed by ints is written as json.dumps writes it: string keys


def loads(text: Union[str, bytes]) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:  # NaN, Infinity or an integer beyond 64 bits: what json.dumps may write
        return json.loads(text)


def dumps_for_store(value: Any) -> str:
    """JSON text with NaN and infinities as null (orjson writes them so)."""
    try:
        return orjson.dumps(value, option=_OPTIONS).decode()
    except TypeError:  # an integer beyond 64 bits, or a type orjson does not know: the json module's way
        return json.dumps(_finite_copy(value))


def _finite_copy(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_copy(v) for v in value]
    return value
