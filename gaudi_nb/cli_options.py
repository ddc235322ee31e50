"""A spec's fields as typer options: one source for `gaudi-nb train`, `gaudi-nb k8s render`, `gaudi-nb nodes attach|provision`."""
from __future__ import annotations

import inspect
from typing import Any, Callable, Collection, List, Optional

import typer

from .spec import OptionField, option_fields


def _parameter(f: OptionField) -> inspect.Parameter:
    help_text = f.help + (f" (one of {', '.join(f.choices)})" if f.choices else "")
    if f.positional:
        default = typer.Argument(..., metavar=f.name.upper(), help=help_text, show_default=False)
        return inspect.Parameter(f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default, annotation=f.type)
    decls = [f"{f.flag}/--no-{f.flag[2:]}"] if f.type is bool else [f.flag]
    # a required option is checked by the spec (one line, as every door says it), not by click
    default = typer.Option(None, *decls, help=help_text + (" (required)" if f.required else ""), show_default=False)
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Optional[f.type])


def spec_parameters(skip: Collection[str] = (), model: Any = None) -> List[inspect.Parameter]:
    return [_parameter(f) for f in option_fields(model) if f.name not in skip]


def with_spec_options(func: Callable[..., Any] = None, *, skip: Collection[str] = (), model: Any = None) -> Any:  # type: ignore[assignment]
    """Give a command every field of a spec (RunSpec by default) as --option (its positional fields as
    arguments, first); they arrive in its **options."""

    def decorate(inner: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(inner)
        own = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        spec = spec_parameters(skip, model)
        arguments = [p for p in spec if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
        options = [p for p in spec if p.kind is inspect.Parameter.KEYWORD_ONLY]
        own_keyword = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]
        inner.__signature__ = signature.replace(parameters=arguments + own_keyword + options)  # type: ignore[attr-defined]
        return inner

    return decorate(func) if func is not None else decorate
