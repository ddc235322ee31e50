"""[tool.gaudi_nb] of the current project's pyproject.toml: the run defaults every door starts from.

`gaudi-nb train`, `gaudi_nb.train()` and `%gaudi_train` (and the launcher) all start from these, under
whatever the call itself gives; the notebook panel's settings live in the same table.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

from .errors import SpecError

# Keys of [tool.gaudi_nb] that are not RunSpec fields but settings of the notebook's panel.
PANEL_SETTINGS = ("panel", "update_interval_s")


def find_pyproject(start: Optional[Path] = None) -> Optional[Path]:
    """The nearest pyproject.toml, walking up from the working directory."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def _read_toml(path: Path) -> Dict[str, Any]:
    try:
        import tomllib  # type: ignore[import-not-found,unused-ignore]
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef,import-not-found,unused-ignore]
        except ImportError:
            return {}
    try:
        data: Dict[str, Any] = tomllib.loads(path.read_text())
        return data
    except (OSError, ValueError) as exc:
        raise SpecError(f"{path}: cannot read [tool.gaudi_nb] ({exc}): fix the file, or remove the table") from None


def project_settings(start: Optional[Path] = None) -> Dict[str, Any]:
    """[tool.gaudi_nb] as written (keys with - or _), checked: RunSpec fields and the panel's settings only."""
    from .spec import RunSpec

    path = find_pyproject(start)
    if path is None:
        return {}
    table = _read_toml(path).get("tool", {}).get("gaudi_nb", {}) or {}
    values = {str(k).replace("-", "_"): v for k, v in table.items()}
    unknown = sorted(set(values) - set(RunSpec.model_fields) - set(PANEL_SETTINGS))
    if unknown:
        raise SpecError(f"{path}: [tool.gaudi_nb] has unknown keys {', '.join(unknown)}: use RunSpec fields (devices, budget_usd, price_per_hour, target, ...)")
    return values


def run_defaults(start: Optional[Path] = None) -> Dict[str, Any]:
    """The RunSpec fields of [tool.gaudi_nb]; a relative path in them is read from the pyproject's folder."""
    from .spec import RunSpec, resolve_paths

    values = {k: v for k, v in project_settings(start).items() if k in RunSpec.model_fields}
    path = find_pyproject(start)
    return resolve_paths(values, path.parent) if values and path is not None else values


__all__ = ["PANEL_SETTINGS", "find_pyproject", "project_settings", "run_defaults"]
