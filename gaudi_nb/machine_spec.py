"""AttachSpec and ProvisionSpec: what attaching a node and provisioning machines take, typed and validated once.

As RunSpec is for runs: `gaudi-nb nodes attach|provision`, `%gaudi_attach`, `%gaudi_provision` and the
launcher's Machines tab build their options from these fields (spec.option_fields), so the doors take
the same values and refuse the same ones with the same line.
"""
from __future__ import annotations

from typing import Any, ClassVar, Dict, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from . import formatting
from .errors import SpecError
from .spec import describe_validation_error

AutostopAction = Literal["stop", "terminate"]
AUTOSTOP_ACTIONS = ("stop", "terminate")
MAX_MACHINES = 64  # one request; a bigger fleet is several groups


def _argument(description: str) -> Any:
    """A field the doors take as a positional argument (the node's address, the provider)."""
    return Field(..., description=description, json_schema_extra={"positional": True})


class _DoorSpec(BaseModel):
    # a NaN or infinite --idle-minutes/--budget-usd would leave autostop watching a limit it can never reach
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @classmethod
    def from_options(cls, **options: Any) -> Any:
        """A spec from keyword options (None means "not given"), with one-line SpecErrors."""
        given = {key.replace("-", "_"): value for key, value in options.items() if value is not None}
        try:
            return cls(**given)
        except ValidationError as exc:
            raise SpecError(describe_validation_error(exc).replace("see gaudi-nb train --help", f"see {cls.HELP}")) from None

    HELP: ClassVar[str] = "gaudi-nb --help"

    def keywords(self) -> Dict[str, Any]:
        """The API's keyword arguments (gaudi_nb.attach, gaudi_nb.nodes.provision.provision): the field names."""
        return self.model_dump()


class AttachSpec(_DoorSpec):
    """Attaching a node over SSH: gaudi_nb.attach's keywords."""

    HELP: ClassVar[str] = "gaudi-nb nodes attach --help"

    url: str = _argument("the node's SSH address, ssh://USER@HOST[:PORT] (HOST may be a Host from ~/.ssh/config), or a Kubernetes cluster, k8s://CONTEXT or k8s://CONTEXT/NAMESPACE")
    name: Optional[str] = Field(None, description="what runs call the node (--target NAME); default: its host name")
    identity_file: Optional[str] = Field(None, description="private key to log in with (default: ~/.ssh keys and the SSH agent)")
    jump: Optional[str] = Field(None, description="bastion to go through: ssh://USER@BASTION[:PORT]")
    python: Optional[str] = Field(None, description="an interpreter on the node that has this gaudi_nb version; default: install it into ~/.gaudi_nb/env there")
    trust_new_host: bool = Field(False, description="record the host key of a node not yet in ~/.ssh/known_hosts")
    # a Kubernetes cluster (k8s://): nodes/cluster.py
    kubeconfig: Optional[str] = Field(None, description="k8s://: the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)")
    image: Optional[str] = Field(None, description="k8s://: the container image the pods run, with this gaudi_nb version (infra/docker builds one); a run needs it")
    storage_class: Optional[str] = Field(None, description="k8s://: the ReadWriteMany storage class of the run folder's volume (default: the cluster's default class)")
    price_per_hour: Optional[float] = Field(None, ge=0, description="k8s://: USD per node-hour a run's pods are billed at while they run")

    @field_validator("url")
    @classmethod
    def _address(cls, value: str) -> str:
        from .nodes.ssh import parse_ssh_url

        value = value.strip()
        try:
            if value.startswith("k8s://"):
                from .nodes.cluster import parse_cluster_url

                parse_cluster_url(value)
            else:
                parse_ssh_url(value)
        except (ValueError, SpecError) as exc:
            raise ValueError(str(exc).removeprefix("url: ")) from None
        return value

    @model_validator(mode="after")
    def _options_of_its_kind(self) -> "AttachSpec":
        cluster = self.url.startswith("k8s://")
        ssh_only = {"identity_file": self.identity_file, "jump": self.jump, "python": self.python, "trust_new_host": self.trust_new_host or None}
        k8s_only = {"kubeconfig": self.kubeconfig, "image": self.image, "storage_class": self.storage_class, "price_per_hour": self.price_per_hour}
        wrong = [name for name, value in (ssh_only if cluster else k8s_only).items() if value is not None]
        if wrong:
            what = "a Kubernetes cluster (k8s://)" if cluster else "an SSH node"
            raise ValueError(f"--{wrong[0].replace('_', '-')} is not for {what}: leave it out")
        return self


class ProvisionSpec(_DoorSpec):
    """Creating cloud machines as nodes: gaudi_nb.nodes.provision.provision's keywords."""

    HELP: ClassVar[str] = "gaudi-nb nodes provision --help"

    provider: str = _argument("aws or ibm")
    instance_type: str = Field(..., description="from the price catalog: dl1.24xlarge (AWS), gx3d-160x1792x8gaudi3 (IBM)")
    count: int = Field(1, ge=1, le=MAX_MACHINES, description="how many machines (the group's machines are NAME-0, NAME-1, ...)")
    region: Optional[str] = Field(None, description="default: the first region the price catalog lists for the type")
    image: Optional[str] = Field(None, description="image id; default: the newest Habana/Gaudi deep learning image")
    name: Optional[str] = Field(None, description="the group's name (gaudi-nb nodes down NAME); default: PROVIDER-xxxxxx")
    ssh_from: Optional[str] = Field(None, description="where SSH is admitted from (a CIDR); default: this machine's public address")
    spot: bool = Field(False, description="spot machines: cheaper, and the cloud may take them back")
    idle_minutes: Optional[float] = Field(None, gt=0, description="autostop: stop a machine after this many idle minutes")
    budget_usd: Optional[float] = Field(None, gt=0, description="autostop: stop a machine when its spend reaches this")
    autostop_action: AutostopAction = Field("stop", description="what autostop does: stop (the disk is kept) or terminate (nothing is kept)")
    attach: bool = Field(True, description="wait for SSH and attach the machines (--no-attach: return once they run)")

    @field_validator("provider")
    @classmethod
    def _known_provider(cls, value: str) -> str:
        from .nodes.providers import providers

        name = value.strip().lower()
        if name not in providers:
            raise ValueError(f"unknown provider '{value}': use {' or '.join(providers.names())}")
        return name

    @field_validator("instance_type")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty: an instance type from gaudi-nb cost catalog")
        return value.strip()

    def quote(self) -> Dict[str, Any]:
        """What this request would cost, before anything is made (provision() prices it the same way): the region it
        goes to, the hourly rate of one machine (None: unknown) and of all, and where the rate comes from. SpecError on a miss."""
        from .errors import NotFoundError
        from .nodes.providers import provider_class, providers
        from .nodes.provision import catalog_rows, choose_region, rate

        try:
            default_region = getattr(provider_class(self.provider), "default_region", None)
        except NotFoundError as exc:
            raise SpecError(str(exc)) from None
        name = providers._aliases.get(self.provider, self.provider)  # the canonical name, as the catalog says it
        region, price = choose_region(name, self.instance_type, self.region, catalog_rows(name, self.instance_type), default_region)
        per_machine, source = rate(price, self.spot)
        return {"region": region, "instance_type": price.instance_type, "accelerator": f"{price.accelerator_count}× {price.accelerator}",
                "price_per_hour": per_machine, "total_per_hour": None if per_machine is None else per_machine * self.count, "source": source}

    def autostop(self) -> str:
        """The autostop settings in words, as the Machines tab shows them before anything is made."""
        limits = [f"after {self.idle_minutes:g} idle minutes" if self.idle_minutes else "", f"at {formatting.money(self.budget_usd)} spent" if self.budget_usd else ""]
        given = " or ".join(limit for limit in limits if limit)
        if not given:
            return "autostop off: billed until Down (gaudi-nb nodes down)"
        return f"autostop: {self.autostop_action} {given}" + ("" if self.attach else " (starts once attached)")


__all__ = ["AUTOSTOP_ACTIONS", "AttachSpec", "MAX_MACHINES", "ProvisionSpec"]
