"""Provision cloud machines as nodes, start stopped ones again and take them down: validate, create, record, attach, start
autostop, follow what the cloud says of them: their state and running intervals (what they cost is cost/billing.py's)."""
from __future__ import annotations

import ipaddress
import os
import secrets
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

from .. import formatting
from ..cost import billing
from ..errors import GaudiNbError, NotFoundError, SpecError
from ..machine_spec import ProvisionSpec
from .attach import check_name
from .teardown import down

if TYPE_CHECKING:
    from ..cost.catalog import Price
    from ..store import RunStore
    from .providers.base import Instance, Provider, Resources

PUBLIC_ADDRESS_URL = "https://checkip.amazonaws.com"
KEY_FILE = "gaudi_nb_ed25519"  # under $GAUDI_NB_HOME/keys: the one key gaudi_nb installs on the machines it makes
WAIT_RUNNING_S = 900.0
WAIT_TERMINATED_S = 900.0
WAIT_SSH_S = 600.0
ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_EC2", "VPC_URL")

Progress = Optional[Callable[[str], None]]


# -- what is asked, checked before anything is created ---------------------------------------
def gaudi_types(provider: str, rows: "List[Price]") -> List[str]:
    return sorted({p.instance_type for p in rows if p.provider == provider and "gaudi" in p.accelerator.lower()})


def catalog_rows(provider: str, instance_type: str) -> "List[Price]":
    """The catalog's rows for a provider's type, one per region it is offered in; a miss lists the provider's Gaudi types."""
    from ..cost import catalog

    rows = catalog.load_catalog()
    matches = [p for p in rows if p.provider == provider and p.instance_type.lower() == instance_type.lower()]
    known = gaudi_types(provider, rows)
    listed = ", ".join(known) if known else "none in the catalog"
    other = [p for p in matches if "gaudi" not in p.accelerator.lower()]
    if other:  # the catalog prices GPU machines too, for comparison; gaudi_nb provisions only Gaudi ones
        raise SpecError(f"{instance_type} is not a Gaudi machine ({other[0].accelerator}): the Gaudi types {provider} offers are {listed}")
    if not matches:
        raise SpecError(f"unknown {provider} instance type '{instance_type}': the Gaudi types {provider} offers are {listed} (others: add a row to {catalog.user_prices_path()})")
    return matches


def choose_region(provider: str, instance_type: str, region: Optional[str], rows: "List[Price]", default_region: Optional[str]) -> "Tuple[str, Price]":
    """The region to use and its catalog row: the one asked for if the catalog offers the type there, else the catalog's first."""
    regional = [p for p in rows if p.region]
    if not regional:  # the catalog does not say where (a region-less row): the provider's default, or the user's
        chosen = region or default_region
        if not chosen:
            raise SpecError(f"the price catalog does not say where {provider} offers {instance_type}: pass --region")
        return chosen, rows[0]
    if region is None:
        return regional[0].region, regional[0]
    for price in regional:
        if price.region.lower() == region.lower():
            return price.region, price
    offered = ", ".join(p.region for p in regional)
    raise SpecError(f"{instance_type} is not offered in {region} (the price catalog lists {offered}): pass --region {regional[0].region}")


def rate(price: "Price", spot: bool) -> Tuple[Optional[float], str]:
    """The hourly rate a machine is billed at, and where it came from; None when the catalog has none."""
    where = f" {price.region}" if price.region else ""
    if spot and price.spot_per_hour is not None:
        return price.spot_per_hour, f"catalog spot: {price.provider} {price.instance_type}{where} (as of {price.as_of})"
    if price.on_demand_per_hour is None:
        from ..cost.catalog import user_prices_path

        return None, f"unknown: the catalog has no price for {price.provider} {price.instance_type}; set one in {user_prices_path()}"
    if spot:
        # a spot request's default maximum is the on-demand price, so that is what it can cost at most
        return price.on_demand_per_hour, f"catalog on-demand, a spot machine's most: {price.provider} {price.instance_type}{where} (as of {price.as_of})"
    return price.on_demand_per_hour, f"catalog: {price.provider} {price.instance_type}{where} (as of {price.as_of})"


def check_cidr(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text.strip(), strict=False))
    except ValueError:
        raise SpecError(f"--ssh-from {text!r} is not an address range: give a CIDR such as 203.0.113.7/32") from None


def public_address(url: str = PUBLIC_ADDRESS_URL, timeout_s: float = 3.0) -> str:
    """This machine's public address as a one-address CIDR (what the security group admits SSH from)."""
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - a fixed https URL
            text = response.read(100).decode().strip()
        address = ipaddress.ip_address(text)
    except (OSError, ValueError) as exc:
        raise SpecError(f"could not find this machine's public address from {url} ({type(exc).__name__}): pass --ssh-from CIDR, the addresses SSH is admitted from") from None
    return f"{address}/{address.max_prefixlen}"


def default_name(provider: str) -> str:
    return f"{provider}-{secrets.token_hex(3)}"


def ensure_key(home: Optional[Path] = None) -> Tuple[Path, str]:
    """gaudi_nb's SSH key under $GAUDI_NB_HOME/keys, made once (ed25519) and reused; returns (private key path, public key line)."""
    from ..paths import home as gaudi_home

    folder = (home or gaudi_home()) / "keys"
    private = folder / KEY_FILE
    public = folder / (KEY_FILE + ".pub")
    if not private.exists() or not public.exists():
        from ..errors import require

        asyncssh = require("asyncssh", "ssh", "the SSH key for provisioned machines")
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        key = asyncssh.generate_private_key("ssh-ed25519", comment="gaudi_nb")
        partial = private.with_suffix(".partial")
        partial.write_bytes(key.export_private_key())
        os.chmod(partial, 0o600)
        public.write_bytes(key.export_public_key())
        partial.replace(private)  # a half-written key is never the key
    return private, public.read_text().strip()


# -- the flow --------------------------------------------------------------------------------
def provision(
    provider: str,
    instance_type: str,
    count: int = 1,
    region: Optional[str] = None,
    image: Optional[str] = None,
    name: Optional[str] = None,
    ssh_from: Optional[str] = None,
    spot: bool = False,
    idle_minutes: Optional[float] = None,
    budget_usd: Optional[float] = None,
    attach: bool = True,
    progress: Progress = None,
    autostop_action: str = "stop",
    *,
    store: "Optional[RunStore]" = None,
) -> List[Dict[str, Any]]:
    """Create `count` machines of `instance_type` on `provider` as the group `name` (machines NAME-0, NAME-1, ...).

    Everything is checked before anything is created: the type and region against the price
    catalog, the names against the store, the credentials and the group against the cloud. Then
    the provider makes (or reuses) the key pair, security group (SSH only from `ssh_from`, default
    this machine's public address) and placement group, starts the machines, waits until they run
    and records each as a node with its price. With `attach` it waits for SSH, attaches each node
    and starts the autostop watchdog when `idle_minutes` or `budget_usd` is given; it
    `autostop_action`s the machine: "stop" (the disk is kept) or "terminate". Returns the node records.
    """
    from ..store import RunStore

    say = progress or (lambda message: None)
    cls, provider_name = _provider_named(provider)
    # the doors' rules (ProvisionSpec), for a Python caller too: one place says what a request may be
    ProvisionSpec.from_options(provider=provider, instance_type=instance_type, count=count, region=region, image=image, name=name, ssh_from=ssh_from,
                               spot=spot, idle_minutes=idle_minutes, budget_usd=budget_usd, autostop_action=autostop_action, attach=attach)
    rows = catalog_rows(provider_name, instance_type)
    region, price = choose_region(provider_name, instance_type, region, rows, getattr(cls, "default_region", None))
    instance_type = price.instance_type
    price_per_hour, price_source = rate(price, spot)
    group = check_name(name or default_name(provider_name))
    names = [check_name(f"{group}-{index}") for index in range(count)]
    store = store or RunStore()
    _refuse_names_in_store(store, names)
    ssh_from = check_cidr(ssh_from) if ssh_from else public_address()

    cloud: Provider = cls(region)
    # a read that needs credentials: missing ones stop here, before anything is made
    running = [i for i in cloud.query_instances(group=group) if i.state != "terminated"]
    if running:
        raise SpecError(f"{len(running)} machine(s) of a group '{group}' already exist in {provider_name} {region}: pick another --name, or gaudi-nb nodes down {group}")
    private_key, public_key = ensure_key()
    owner = store.identity.user or "unknown"  # PostgreSQL's current_user on a team store: its policy checks it
    from .providers.base import ProvisionRequest

    request = ProvisionRequest(provider=provider_name, instance_type=instance_type, count=count, region=region, name=group, ssh_from=ssh_from,
                               public_key=public_key, owner=owner, image=image, spot=spot, idle_minutes=idle_minutes, budget_usd=budget_usd)
    say(f"{provider_name} {region}: {count}× {instance_type}{' (spot)' if spot else ''} as {group}, SSH from {ssh_from}; "
        f"{formatting.rate(price_per_hour) + ' each' if price_per_hour is not None else 'price unknown'}")
    resources, instances = _start_instances(cloud, request, say)
    records = _record_all(store, request, cloud, resources, instances, private_key, price_per_hour, price_source)
    say("started " + ", ".join(f"{r['name']} ({r['instance_id']})" for r in records) + "; waiting until they run")
    try:
        instances = cloud.wait_instances([i.id for i in instances], "running", timeout_s=WAIT_RUNNING_S)
    except GaudiNbError as exc:
        raise GaudiNbError(f"{exc}; they are recorded and billed until you run gaudi-nb nodes down {group}") from None
    records = [_update_from(store, cloud, instance) for instance in instances]
    say("running: " + ", ".join(f"{r['name']} {r['host']}" for r in records))
    if not attach:
        if idle_minutes is not None or budget_usd is not None:
            say("autostop: not started without attaching; attach each node (gaudi-nb nodes attach) to start it")
        return records
    return [_attach(store, record, private_key, say, autostop_action) for record in records]


def _provider_named(provider: str) -> Tuple[Any, str]:
    """The provider's class and its canonical name ("ibm" for "ibm-cloud"): what the catalog and the store say."""
    from .providers import provider_class, providers

    try:
        return provider_class(provider), providers._aliases.get(provider.lower(), provider.lower())
    except NotFoundError as exc:
        raise SpecError(str(exc)) from None


def _refuse_names_in_store(store: "RunStore", names: List[str]) -> None:
    """A machine's name must be new to the store: a terminated machine's record stays, with its cost history."""
    for node in names:
        try:
            existing = store.get_node(node)
        except NotFoundError:
            continue
        kept = " (its cost history is kept)" if existing.get("terminated_at") else ""
        raise SpecError(f"a node named '{node}' is in the store already{kept}: pick another --name, or gaudi-nb nodes detach {node}")


def _start_instances(cloud: "Provider", request: Any, say: Callable[[str], None]) -> Tuple["Resources", List["Instance"]]:
    """The group's shared resources (key pair, security group, placement group), then its machines; when the
    machines cannot start, the resources made for them are removed again."""
    resources = cloud.bootstrap_instances(request)
    for warning in resources.network.get("warnings") or []:
        say(f"warning: {warning}")
    try:
        instances = cloud.run_instances(request, resources)
    except BaseException:
        # nothing runs, so nothing should stay behind either
        cloud.cleanup(resources)
        raise
    return resources, instances


def _record_all(store: "RunStore", request: Any, cloud: "Provider", resources: "Resources", instances: List["Instance"], private_key: Path,
                price_per_hour: Optional[float], price_source: str) -> List[Dict[str, Any]]:
    """Record each machine as a node; a machine that cannot be recorded (a store write fails, a Ctrl-C) would bill where no
    command sees it, so then every machine just made is terminated and what was made for them removed, before the error."""
    launched = time.time()
    try:
        return [_record(store, request, cloud, resources, instance, private_key, price_per_hour, price_source, launched) for instance in instances]
    except BaseException as exc:
        ids = [i.id for i in instances]
        try:
            cloud.terminate_instances(ids)
            cloud.wait_instances(ids, "terminated", timeout_s=WAIT_TERMINATED_S)
            cloud.cleanup(resources)
        except GaudiNbError as cleanup_error:
            raise GaudiNbError(f"{', '.join(ids)} could not be recorded ({exc}) nor terminated ({cleanup_error}): terminate them in the "
                               f"{request.provider} console ({request.region})") from None
        if isinstance(exc, GaudiNbError):
            raise type(exc)(f"{exc}; the machines just made ({', '.join(ids)}) were terminated") from None
        raise


def _record(store: "RunStore", request: Any, cloud: "Provider", resources: "Resources", instance: "Instance", private_key: Path,
            price_per_hour: Optional[float], price_source: str, launched: float) -> Dict[str, Any]:
    from dataclasses import asdict

    host = instance.public_ip or instance.private_ip or instance.id
    return store.add_node({
        "name": instance.node, "url": f"ssh://{cloud.ssh_user}@{host}:22", "user": cloud.ssh_user, "host": host, "port": 22,
        "identity_file": str(private_key), "owner": request.owner, "attached_at": launched,
        "provider": request.provider, "region": request.region, "instance_id": instance.id, "instance_type": request.instance_type,
        "group": request.name, "state": instance.state, "price_per_hour": price_per_hour, "price_source": price_source,
        "launched_at": instance.launched_at or launched, "running_since": instance.launched_at or launched, "billed_intervals": [], "resources": asdict(resources),
        "idle_minutes": request.idle_minutes, "budget_usd": request.budget_usd,
    })


def _update_from(store: "RunStore", cloud: "Provider", instance: "Instance") -> Dict[str, Any]:
    fields: Dict[str, Any] = {"state": instance.state}
    host = instance.public_ip or instance.private_ip
    if host:
        fields.update(host=host, url=f"ssh://{cloud.ssh_user}@{host}:22")
    if instance.launched_at:
        fields["launched_at"] = fields["running_since"] = instance.launched_at  # the cloud's own clock starts the bill
    return store.update_node(instance.node, **fields)


# -- what the cloud says now: state, address, billed time ------------------------------------
def follow(store: "RunStore", cloud: "Provider", record: Dict[str, Any], instance: "Instance", now: Optional[float] = None) -> Dict[str, Any]:
    """Write down what the cloud says of one machine: its state, its address after a start (a stopped EC2
    machine loses its public address), and its billed time. A running interval closes when the cloud says
    it stopped (autostop, the console), at the time the cloud gives for it where it gives one."""
    now = time.time() if now is None else now
    fields: Dict[str, Any] = {}
    if instance.state != record.get("state"):
        fields["state"] = instance.state
    since = record.get("running_since")
    if instance.state in billing.BILLED_STATES:
        if since is None:
            # EC2's LaunchTime is the last start; a cloud that does not move it on a start: from when it was seen running
            launched = instance.launched_at
            fields["running_since"] = launched if launched is not None and launched > _last_end(record) else now
        host = instance.public_ip or instance.private_ip
        if host and host != record.get("host"):
            fields.update(host=host, url=f"ssh://{cloud.ssh_user}@{host}:{record.get('port') or 22}")
    elif since is not None:
        until = min(now, max(float(since), float(instance.extra.get("state_changed_at") or now)))
        fields["billed_intervals"] = [*(record.get("billed_intervals") or []), [since, until]]
        fields["running_since"] = None
        if instance.state == "terminated":
            fields["terminated_at"] = until
    if instance.state == "terminated" and record.get("cost_usd") is None:
        fields["cost_usd"] = billing.machine_spend({**record, **fields}, now)["usd"]
        fields.setdefault("terminated_at", now)
    return store.update_node(record["name"], **fields) if fields else record


def _last_end(record: Dict[str, Any]) -> float:
    intervals = record.get("billed_intervals") or []
    return float(intervals[-1][1]) if intervals else 0.0


def _places(records: List[Dict[str, Any]]) -> Dict[Tuple[str, str], List[Dict[str, Any]]]:
    by_place: Dict[Tuple[str, str], List[Dict[str, Any]]] = {}
    for record in records:
        by_place.setdefault((record["provider"], record["region"]), []).append(record)
    return by_place


def _in_the_cloud(cloud: "Provider", records: List[Dict[str, Any]]) -> Dict[str, "Instance"]:
    return {i.id: i for group in {r["group"] for r in records} for i in cloud.query_instances(group=group)}


def refresh(records: List[Dict[str, Any]], progress: Progress = None, *, store: "Optional[RunStore]" = None) -> List[Dict[str, Any]]:
    """The records with what the clouds say now of every provisioned machine among them that is not terminated.
    A cloud that cannot be asked (no credentials here) leaves its machines as last recorded, and says so."""
    from ..store import RunStore
    from .providers import provider as provider_for

    say = progress or (lambda message: None)
    store = store or RunStore()
    followed: Dict[str, Dict[str, Any]] = {}
    # a teammate's machine on a team store is shown as its owner last wrote it: only they (or an admin) write it
    live = [r for r in records if r.get("provider") and r.get("instance_id") and r.get("state") != "terminated" and store.may_change(r.get("owner"))]
    for (provider_name, region), group_records in _places(live).items():
        try:
            cloud = provider_for(provider_name, region)
            found = _in_the_cloud(cloud, group_records)
        except GaudiNbError as exc:
            say(f"{provider_name} {region}: states as last recorded ({exc})")
            continue
        for record in group_records:
            if record["instance_id"] in found:
                followed[record["name"]] = follow(store, cloud, record, found[record["instance_id"]])
    return [followed.get(r["name"], r) for r in records]


def _provisioned(store: "RunStore", name: str) -> List[Dict[str, Any]]:
    """A group's machines, or one machine by its node name."""
    records = [r for r in store.list_nodes(group=name) if r.get("provider")]
    if records:
        return records
    try:
        one = store.get_node(name)
    except NotFoundError:
        raise SpecError(f"no provisioned group or machine named '{name}': gaudi-nb nodes list --all shows them") from None
    if not one.get("provider"):
        raise SpecError(f"'{name}' was attached over SSH, not provisioned by gaudi_nb: gaudi-nb nodes detach {name} forgets it")
    return [one]


def start(name: str, progress: Progress = None, *, attach: bool = True, store: "Optional[RunStore]" = None, force: bool = False) -> List[Dict[str, Any]]:
    """Start a group's stopped machines (or one by its node name) again: wait until they run, write down their new
    address and billed time, then (with `attach`) wait for SSH, attach each and start its autostop again."""
    from ..store import RunStore
    from .providers import provider as provider_for

    say = progress or (lambda message: None)
    store = store or RunStore()
    records = _provisioned(store, name)
    for record in records:  # someone else's machine on a team store: refused (and audited) unless an admin forces it
        store.guard("start", name, record.get("owner"), force=force, what=f"machine {record['name']}")
    store.audit("start", name, detail={"force": force})
    records = refresh(records, say, store=store)
    gone = [r["name"] for r in records if r.get("state") == "terminated"]
    if gone and len(gone) == len(records):
        raise SpecError(f"{', '.join(gone)}: terminated, nothing to start; make new machines with gaudi-nb nodes provision")
    started: List[Dict[str, Any]] = []
    for (provider_name, region), group_records in _places([r for r in records if r.get("state") != "terminated"]).items():
        cloud = provider_for(provider_name, region)
        stopped = [r for r in group_records if r.get("state") in ("stopped", "stopping")]
        if stopped:
            say("starting " + ", ".join(f"{r['name']} ({r['instance_id']})" for r in stopped))
            stopping = [r["instance_id"] for r in stopped if r.get("state") == "stopping"]
            if stopping:  # a machine still stopping cannot be started yet
                cloud.wait_instances(stopping, "stopped", timeout_s=WAIT_RUNNING_S)
            cloud.start_instances([r["instance_id"] for r in stopped])
        ids = [r["instance_id"] for r in group_records]
        for instance in cloud.wait_instances(ids, "running", timeout_s=WAIT_RUNNING_S):
            record = next(r for r in group_records if r["instance_id"] == instance.id)
            started.append(follow(store, cloud, store.get_node(record["name"]), instance))
    say("running: " + ", ".join(f"{r['name']} {r['host']}" for r in started))
    if not attach:
        return started
    private_key, _ = ensure_key()
    return [_attach(store, record, Path(record.get("identity_file") or private_key), say) for record in started]


def wait_for_ssh(host: str, port: int = 22, timeout_s: float = WAIT_SSH_S) -> None:
    """Until the machine's sshd accepts a connection (a fresh machine boots for a minute or two)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=5):
                return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise GaudiNbError(f"SSH on {host}:{port} did not answer within {timeout_s:.0f} s ({exc})") from None
            time.sleep(3)


def _attach(store: "RunStore", record: Dict[str, Any], private_key: Path, say: Callable[[str], None], autostop_action: str = "stop") -> Dict[str, Any]:
    from .attach import attach as attach_node

    name = record["name"]
    try:
        wait_for_ssh(record["host"], int(record["port"]))
        say(f"{name}: SSH answers; attaching")
        # trust_new_host: the machine was created a minute ago by these credentials and its host key
        # was generated at first boot, so no earlier key can exist to compare with; the address is
        # the one EC2 reported for the instance id we launched, not one a third party supplied.
        record = attach_node(record["url"], name=name, identity_file=str(private_key), trust_new_host=True, store=store, progress=say)
    except GaudiNbError as exc:
        raise GaudiNbError(f"{name} runs but attaching failed: {exc}; retry with gaudi-nb nodes attach {record['url']} --name {name} "
                           f"--identity-file {private_key}, or gaudi-nb nodes down {record['group']}") from None
    if record.get("idle_minutes") is not None or record.get("budget_usd") is not None:
        _start_autostop(record, say, autostop_action)
    return record


def autostop_settings(record: Dict[str, Any]) -> Dict[str, Any]:
    """The watchdog's settings for a provisioned machine's record: its limits, price and billed time so far."""
    config: Dict[str, Any] = {key: record.get(key) for key in ("idle_minutes", "budget_usd", "price_per_hour", "provider", "region", "instance_id", "launched_at")}
    if record.get("running_since") is not None:  # started again after a stop: the budget counts the time it ran, not the time it was stopped
        config["launched_at"] = record["running_since"]
        config["billed_before_s"] = sum(float(end) - float(start) for start, end in record.get("billed_intervals") or [])
    return config


def _start_autostop(record: Dict[str, Any], say: Callable[[str], None], action: str) -> None:
    from .autostop import start_on_node

    config = autostop_settings(record)
    # where this client reaches the cloud's API, when it is not the public one (never credentials:
    # the machine has its own, from an instance role)
    config["environment"] = {name: os.environ[name] for name in ENDPOINT_VARIABLES if os.environ.get(name)}
    if record.get("provider") == "ibm" and os.environ.get("GAUDI_NB_IBM_TRUSTED_PROFILE"):
        # the machine signs in as its trusted profile through its metadata service (providers/ibm.py turns it on)
        config["environment"]["VPC_AUTH_TYPE"] = "vpc"
    config["action"] = action
    answer = start_on_node(record, config)
    if answer.get("may_act") is False:  # reported as watching, it would leave the machine billing when it should stop it
        say(f"{record['name']}: autostop cannot {action} this machine ({answer.get('cannot_act')}); it tries again at every check: give the machine "
            f"a role that may (see Autostop's Permissions in docs/nodes.md), or gaudi-nb nodes down {record.get('group') or record['name']} yourself")
        return
    say(f"{record['name']}: autostop ({action}) watching" + "".join(f", {label} {record[key]:g}" for key, label in (("idle_minutes", "idle minutes"), ("budget_usd", "budget $")) if record.get(key) is not None))
    if not answer.get("survives_reboot"):
        say(f"{record['name']}: autostop {answer.get('note') or 'will not survive a reboot of the machine'}")


__all__ = ["autostop_settings", "down", "ensure_key", "provision", "public_address", "refresh", "start"]
