"""The one family of errors gaudi_nb raises; each message says what to do next."""
from __future__ import annotations


class GaudiNbError(Exception):
    """Base of every error a user should see as one line."""


class SpecError(GaudiNbError, ValueError):
    """A run spec or option is invalid (bad input: CLI exit code 2)."""


class NotFoundError(GaudiNbError, LookupError):
    """A name (run, preset, target, instance type) is not known."""


class MissingExtraError(GaudiNbError, ImportError):
    """An optional SDK is not installed; the message names the extra."""

    def __init__(self, package: str, extra: str, purpose: str = "") -> None:
        why = f" (needed for {purpose})" if purpose else ""
        super().__init__(f"{package} is not installed{why}: pip install 'gaudi_nb[{extra}]'")
        self.package = package
        self.extra = extra


def require(module: str, extra: str, purpose: str = ""):
    """Import an optional SDK lazily, or raise MissingExtraError naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(module, extra, purpose) from exc


class NotAllowedError(GaudiNbError, PermissionError):
    """The caller's team role does not let them change this (someone else's run or machine): CLI exit code 2."""
