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
    """Attaching a node over SSH, or a Slurm cluster (slurm: or slurm://USER@LOGIN): gaudi_nb.attach's keywords."""

    HELP: ClassVar[str] = "gaudi-nb nodes attach --help"

    url: str = _argument("the node's SSH address, ssh://USER@HOST[:PORT] (HOST may be a Host from ~/.ssh/config); a Kubernetes cluster, k8s://CONTEXT or k8s://CONTEXT/NAMESPACE; a Slurm cluster, slurm: (its commands here) or slurm://USER@LOGIN[:PORT]")
    name: Optional[str] = Field(None, description="what runs call the node (--target NAME); default: its host name")
    identity_file: Optional[str] = Field(None, description="private key to log in with (default: ~/.ssh keys and the SSH agent)")
    jump: Optional[str] = Field(None, description="bastion to go through: ssh://USER@BASTION[:PORT]")
    python: Optional[str] = Field(None, description="an interpreter on the node that has this gaudi_nb version; default: install it into ~/.gaudi_nb/env there")
    trust_new_host: bool = Field(False, description="record the host key of a node not yet in ~/.ssh/known_hosts")
    # a Kubernetes cluster (k8s://): nodes/cluster.py
    kubeconfig: Optional[str] = Field(None, description="k8s://: the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)")
    image: Optional[str] = Field(None, description="k8s://: the container image the pods run, with this gaudi_nb version (infra/docker builds one); a run needs it")
    storage_class: Optional[str] = Field(None, description="k8s://: the ReadWriteMany storage class of the run folder's volume (default: the cluster's default class)")
    # a Slurm cluster (slurm: URLs): nodes/slurm.py
    partition: Optional[str] = Field(None, description="Slurm: the partition runs go to; default: the cluster's default partition")
    account: Optional[str] = Field(None, description="Slurm: the account jobs are charged to (--account)")
    qos: Optional[str] = Field(None, description="Slurm: the quality of service of its jobs (--qos)")
    run_root: Optional[str] = Field(None, description="Slurm: the folder on the cluster's shared filesystem that holds runs; default: GAUDI_NB_HOME there")
    # either cluster
    price_per_hour: Optional[float] = Field(None, ge=0, description="a cluster (k8s://, slurm:): USD per node-hour a run is billed at for each node while it runs; default: unknown")

    @field_validator("url")
    @classmethod
    def _address(cls, value: str) -> str:
        from .nodes.ssh import parse_ssh_url

        value = value.strip()
        if value.startswith("slurm:"):
            from .nodes.slurm import parse_slurm_url

            try:
                parse_slurm_url(value)
            except SpecError as exc:
                raise ValueError(str(exc).removeprefix("url: ")) from None
            return value
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
        kind = "k8s" if self.url.startswith("k8s://") else "slurm" if self.url.startswith("slurm:") else "ssh"
        only = {  # each option and the kinds of address it is for
            "identity_file": ("ssh", "slurm"), "jump": ("ssh",), "python": ("ssh", "slurm"), "trust_new_host": ("ssh", "slurm"),
            "kubeconfig": ("k8s",), "image": ("k8s",), "storage_class": ("k8s",),
            "partition": ("slurm",), "account": ("slurm",), "qos": ("slurm",), "run_root": ("slurm",), "price_per_hour": ("k8s", "slurm"),
        }
        what = {"k8s": "a Kubernetes cluster (k8s://)", "slurm": "a Slurm cluster (slurm:)", "ssh": "an SSH node"}
        wrong = [name for name, kinds in only.items() if kind not in kinds and getattr(self, name) not in (None, False)]
        if wrong:
            raise ValueError(f"--{wrong[0].replace('_', '-')} is not for {what[kind]}: leave it out")
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
