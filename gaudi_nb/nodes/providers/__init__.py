"""Cloud providers in a registry: `provider("aws", region)` routes to one module's verbs (see base.Provider)."""
from __future__ import annotations

import importlib
from typing import Any, Callable

from ...registry import Registry
from .base import Capabilities, Instance, Provider, ProvisionRequest, Resources

# name -> "module:Class"; imported only when used, so the SDKs stay optional extras.
providers: Registry = Registry("providers")
providers.register("aws", "gaudi_nb.nodes.providers.aws:AwsProvider")
providers.register("ibm", "gaudi_nb.nodes.providers.ibm:IbmProvider", aliases=("ibm-cloud",))


def provider_class(name: str) -> Callable[..., Provider]:
    """The provider class for a name (a third party may register the class itself)."""
    entry: Any = providers.get(name)
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = getattr(importlib.import_module(module), attr)
    return entry


def provider(name: str, region: str) -> Provider:
    """A provider bound to a region."""
    return provider_class(name)(region)


__all__ = ["Capabilities", "Instance", "Provider", "ProvisionRequest", "Resources", "provider", "provider_class", "providers"]
