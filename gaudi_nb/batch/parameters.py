"""Typed notebook parameters: read the cell tagged `parameters`, check values against its defaults, expand sweeps.

Pure functions over a notebook dict (nbformat or plain JSON): nothing here executes a cell.
"""
from __future__ import annotations

import ast
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ..errors import SpecError
from .manifest import MASK, SecretValue, looks_secret

PARAMETERS_TAG = "parameters"
_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "dict": dict, "tuple": tuple}
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


@dataclass(frozen=True)
class Parameter:
    """One assignment of the parameters cell: its name, default and the type that default implies."""

    name: str
    default: Any
    type_name: Optional[str]  # int | float | str | bool | list | dict | tuple | None (unknown: anything goes)
    source: str  # the right-hand side as written
    literal: bool = True  # False: an expression, evaluated only when the cell runs

    @property
    def value(self) -> Any:
        """The default as a value where it is a literal, else its source text."""
        return self.default if self.literal else self.source

    def describe(self) -> str:
        return f"{self.type_name or 'any'} (default {self.source})"


def load_notebook(path: Path) -> Dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise SpecError(f"notebook not found: {path}")
    if path.suffix != ".ipynb":
        raise SpecError(f"{path}: a batch job runs a Jupyter notebook (.ipynb)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise SpecError(f"{path}: not a notebook ({exc})") from None


def _source(cell: Mapping[str, Any]) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def parameters_cell_index(nb: Mapping[str, Any]) -> int:
    for i, cell in enumerate(nb.get("cells", [])):
        if PARAMETERS_TAG in (cell.get("metadata", {}).get("tags") or []):
            return i
    return -1


def notebook_parameters(nb: Mapping[str, Any]) -> Dict[str, Parameter]:
    """The parameters cell's assignments, in order; {} when the notebook has no such cell."""
    index = parameters_cell_index(nb)
    if index < 0:
        return {}
    source = _source(nb["cells"][index])
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise SpecError(f"the parameters cell does not parse as Python: {exc}") from None
    found: Dict[str, Parameter] = {}
    for node in tree.body:
        annotation = None
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name, value = node.targets[0].id, node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            name, value, annotation = node.target.id, node.value, node.annotation
        else:
            continue
        text = ast.get_source_segment(source, value) or ast.unparse(value)
        literal = True
        try:
            default = ast.literal_eval(value)
            type_name: Optional[str] = None if default is None else type(default).__name__
        except (ValueError, SyntaxError, TypeError):
            default, type_name, literal = None, None, False  # an expression: its type is not known before it runs
        if isinstance(annotation, ast.Name) and annotation.id in _TYPES:
            type_name = annotation.id
        if type_name not in _TYPES:
            type_name = None
        found[name] = Parameter(name, default, type_name, text, literal)
    return found


def _bad(param: Parameter, value: Any) -> SpecError:
    return SpecError(f"{param.name}: expected {param.describe()}, got {_shown(param.name, value)}")


def _shown(name: str, value: Any) -> str:
    """repr(value) for a message; a secret-looking parameter's value is not printed."""
    return MASK if looks_secret(name) or isinstance(value, SecretValue) else repr(value)


def coerce(param: Parameter, value: Any) -> Any:
    """`value` as the parameter's type; strings from the command line are parsed ("1e-3" → 0.001).

    Raises SpecError naming the parameter, the expected type and the value.
    """
    kind = param.type_name
    if isinstance(value, SecretValue) and kind in (None, "str"):
        return value  # kept as given (and marked): never parsed as a literal, never recorded
    if kind is None:
        if isinstance(value, str):
            try:
                return ast.literal_eval(value)
            except (ValueError, SyntaxError):
                return value
        return value
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise _bad(param, value)
    if kind in ("int", "float"):
        if isinstance(value, bool):
            raise _bad(param, value)
        number: Any = value
        if isinstance(value, str):
            text = value.strip().replace("_", "")
            try:
                number = int(text)
            except ValueError:
                try:
                    number = float(text)
                except ValueError:
                    raise _bad(param, value) from None
        if not isinstance(number, (int, float)):
            raise _bad(param, value)
        if kind == "float":
            return float(number)
        if isinstance(number, float):
            if not number.is_integer():
                raise _bad(param, value)
            return int(number)
        return number
    if kind == "str":
        if isinstance(value, str):
            return value
        raise _bad(param, value)
    # list, dict, tuple
    expected = _TYPES[kind]
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise _bad(param, value) from None
    if kind == "tuple" and isinstance(value, list):
        value = tuple(value)
    if kind == "list" and isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, expected):
        raise _bad(param, value)
    return value


def _check_names(declared: Mapping[str, Parameter], given: Mapping[str, Any]) -> None:
    unknown = [name for name in given if name not in declared]
    if not unknown:
        return
    if not declared:
        raise SpecError(f"unknown parameter {', '.join(repr(n) for n in unknown)}: the notebook has no cell tagged 'parameters'")
    raise SpecError(f"unknown parameter {', '.join(repr(n) for n in unknown)}: the notebook's parameters are {', '.join(declared)}")


def validate(declared: Mapping[str, Parameter], given: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """The given parameters, checked and converted; raises SpecError before anything runs."""
    given = dict(given or {})
    _check_names(declared, given)
    return {name: coerce(declared[name], value) for name, value in given.items()}


def _is_sweep(param: Optional[Parameter], value: Any) -> bool:
    if isinstance(value, (list, tuple)) and not (param and param.type_name in ("list", "tuple")):
        return True
    if isinstance(value, SecretValue):
        return False  # a secret is one value, commas and all
    # "1e-4,3e-4,1e-3": a comma splits values only where a comma cannot be part of one value
    return isinstance(value, str) and "," in value and param is not None and param.type_name in ("int", "float", "bool", None) and not value.lstrip().startswith(("[", "(", "{"))


def expand_grid(declared: Mapping[str, Parameter], given: Optional[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """Every combination of the swept values (cartesian product), each checked and converted.

    A swept value is a comma-separated string for a number/bool parameter ("1e-4,3e-4") or a
    Python list for a parameter whose default is not a list. No sweep: a list of one.
    """
    given = dict(given or {})
    _check_names(declared, given)
    axes: List[Sequence[Any]] = []
    for name, value in given.items():
        param = declared[name]
        if _is_sweep(param, value):
            values = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else list(value)
            if not values:
                raise SpecError(f"{name}: a sweep needs at least one value, got {_shown(name, value)}")
            axes.append([coerce(param, v) for v in values])
        else:
            axes.append([coerce(param, value)])
    names = list(given)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*axes)] if names else [{}]


def effective(declared: Mapping[str, Parameter], given: Mapping[str, Any]) -> Dict[str, Any]:
    """Every parameter's value for a run: the defaults, overridden by the given ones."""
    return {**{name: p.value for name, p in declared.items()}, **dict(given)}

