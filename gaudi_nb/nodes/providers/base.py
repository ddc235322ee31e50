"""The shape every cloud provider has: what it can do, the machines it made, and the verbs callers route to by name."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Protocol, Tuple

# Tag (AWS) / label (IBM) keys on everything gaudi_nb creates, so `down` and the
# watchdog find a group's machines and resources from the cloud itself.
TAG_MANAGED = "gaudi_nb"
TAG_OWNER = "gaudi_nb:owner"
TAG_GROUP = "gaudi_nb:group"
TAG_NODE = "gaudi_nb:node"


@dataclass(frozen=True)
class Capabilities:
    """What a provider can do; the CLI refuses options a provider lacks in one line."""

    spot: bool
    placement_groups: bool
    stop: bool  # machines can be stopped (disk kept, compute not billed) as well as terminated
    credentials_help: str  # one line: how to give this provider credentials


@dataclass
class ProvisionRequest:
    """What the user asked for; `name` names the group (machines are NAME-0, NAME-1, ...)."""

    provider: str
    instance_type: str
    count: int
    region: str
    name: str
    ssh_from: str  # CIDR admitted to port 22
    public_key: str  # OpenSSH public key line installed on the machines
    owner: str
    image: Optional[str] = None
    spot: bool = False
    idle_minutes: Optional[float] = None
    budget_usd: Optional[float] = None


@dataclass
class Instance:
    """One machine as the cloud reports it."""

    id: str
    node: str  # gaudi_nb's name for it (NAME-i), from its tag
    state: str  # pending | running | stopping | stopped | terminated (the provider maps its own words)
    instance_type: str
    region: str
    public_ip: Optional[str] = None
    private_ip: Optional[str] = None
    launched_at: Optional[float] = None  # epoch seconds
    extra: Dict[str, Any] = field(default_factory=dict)  # provider ids the provider needs again (floating IP, ...)


@dataclass
class Resources:
    """What bootstrap created or reused for a group; `created` lists what `down` may remove."""

    key: Optional[str] = None
    security_group: Optional[str] = None
    placement_group: Optional[str] = None
    network: Dict[str, Any] = field(default_factory=dict)  # subnet, VPC, ... as the provider needs
    created: List[Tuple[str, str]] = field(default_factory=list)  # (kind, id) that gaudi_nb made


class Provider(Protocol):
    """The verbs (SkyPilot's provision API shape). One instance per region."""

    name: str
    capabilities: Capabilities
    ssh_user: str  # the image's login user

    def bootstrap_instances(self, request: ProvisionRequest) -> Resources: ...

    def run_instances(self, request: ProvisionRequest, resources: Resources) -> List[Instance]: ...

    def wait_instances(self, ids: List[str], state: str, timeout_s: float = 600) -> List[Instance]: ...

    def query_instances(self, group: Optional[str] = None, ids: Optional[List[str]] = None) -> List[Instance]: ...

    def stop_instances(self, ids: List[str]) -> None: ...

    def start_instances(self, ids: List[str]) -> None: ...

    def terminate_instances(self, ids: List[str]) -> None:
        """Terminate first (a role that may only terminate still ends the bill), then release the machines' public addresses."""
        ...

    def release_addresses(self, ids: List[str], nodes: List[str]) -> List[str]:
        """Release the public addresses gaudi_nb made for these machines (ids, and gaudi_nb's names for them),
        also when the machines are already gone: an address outlives its machine and is billed on its own."""
        ...

    def may_act(self, instance_id: str, action: str) -> Optional[str]:
        """Asked on the machine itself before autostop says it watches: None when the machine's own credentials may
        `action` ("stop" | "terminate") it, else why not in one line (an autostop that cannot act must not look like one that can)."""
        ...

    def cleanup(self, resources: Resources) -> List[Tuple[str, str]]:
        """Remove what gaudi_nb created for the group once no machine uses it; returns what was removed."""
        ...
