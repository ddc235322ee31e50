"""RunSpec's fields as typer options: one source for `gaudi-nb train`, `gaudi-nb k8s render` and anything else that takes a run."""
from __future__ import annotations

import inspect
from typing import Any, Callable, Collection, List, Optional

import typer

from .spec import option_fields


def spec_parameters(skip: Collection[str] = ()) -> List[inspect.Parameter]:
    params = []
    for f in option_fields():
        if f.name in skip:
            continue
        decls = [f"{f.flag}/--no-{f.flag[2:]}"] if f.type is bool else [f.flag]
        help_text = f.help + (f" (one of {', '.join(f.choices)})" if f.choices else "")
        params.append(
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=typer.Option(None, *decls, help=help_text, show_default=False),
                annotation=Optional[f.type],
            )
        )
    return params


def with_spec_options(func: Callable[..., Any] = None, *, skip: Collection[str] = ()) -> Any:  # type: ignore[assignment]
    """Give a command every RunSpec field as --option; they arrive in its **options."""

    def decorate(inner: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(inner)
        own = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        inner.__signature__ = signature.replace(parameters=own + spec_parameters(skip))  # type: ignore[attr-defined]
        return inner

    return decorate(func) if func is not None else decorate
