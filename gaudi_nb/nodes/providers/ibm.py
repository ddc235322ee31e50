"""IBM Cloud VPC: Gaudi 3 virtual server instances (gx3d-160x1792x8gaudi3) made through the ibm-vpc SDK."""
from __future__ import annotations

import base64
import hashlib
import ipaddress
import os
import re
import time
from datetime import datetime
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from ...errors import GaudiNbError, NotFoundError, SpecError, require
from .base import Capabilities, Instance, ProvisionRequest, Resources

# The Gaudi profiles this provider knows; anything else is refused before a call is made.
GAUDI_PROFILES = {"gx3d-160x1792x8gaudi3": "8 x Intel Gaudi 3"}

# IBM's VPC API has no tags of its own (user tags live in a separate Global Tagging
# service), so a machine's group is its name: gaudi-nb-GROUP-INDEX. query_instances
# and `down` find a group's machines from the cloud by that name alone.
PREFIX = "gaudi-nb-"

# Images gaudi_nb looks for, best first: an image with the Intel Gaudi software stack,
# then IBM's stock Ubuntu 22.04 (the Gaudi software installs on it).
IMAGE_PATTERNS = (re.compile(r"gaudi", re.I), re.compile(r"^ibm-ubuntu-22-04-.*-amd64"))

# IBM's instance statuses in base.Instance's words. `deleting` is already on its way
# out (wait_instances(..., "terminated") still waits until it is gone), and `failed`
# is kept as such: such an instance must be deleted, it never becomes running.
STATES = {
    "pending": "pending", "starting": "pending", "restarting": "pending", "resuming": "pending", "running": "running",
    "stopping": "stopping", "suspending": "stopping", "stopped": "stopped", "suspended": "stopped", "deleting": "terminated", "failed": "failed",
}

# The API behaviour gaudi_nb is written against (IBM's `version` query parameter), whatever
# ibm-vpc release is installed: rule protocol `any`, spot availability, trusted profiles.
API_VERSION = "2026-10-06"

# IBM names: lowercase letters, digits and hyphens, starting with a letter, at most 63.
NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

CREDENTIALS_HELP = (
    "set IBMCLOUD_API_KEY (or VPC_APIKEY, or any ibm-cloud-sdk-core setting such as VPC_AUTH_TYPE "
    "or an ibm-credentials.env file); create a key with `ibmcloud iam api-key-create gaudi-nb`"
)


def _short(message: Any) -> str:
    return " ".join(str(message).split())


class IbmProvider:
    """IBM Cloud VPC in one region; the SDK client is made on first use, so capabilities need no credentials."""

    name = "ibm"
    # Where the Gaudi 3 profile first became available (IBM VPC release notes, 2025-03-19);
    # the catalog's row has no region, so `provision` falls back to this.
    default_region = "us-east"
    # IBM's stock Linux images log in as root.
    ssh_user = "root"
    # spot: availability class `spot`, where the profile offers it (checked per request). No placement groups:
    # IBM's only spread machines apart; closeness for training is a cluster network, which this provider does not create.
    capabilities = Capabilities(spot=True, placement_groups=False, stop=True, credentials_help=CREDENTIALS_HELP)

    def __init__(self, region: str) -> None:
        self.region = region
        self._vpc: Any = None
        # floating IPs released by terminate_instances, by instance id: waiting for
        # "terminated" also waits for them, since they are billed on their own.
        self._released: Dict[str, List[str]] = {}

    # ---- the SDK client -------------------------------------------------------------

    @property
    def vpc(self) -> Any:
        if self._vpc is None:
            self._vpc = self._client()
        return self._vpc

    def _client(self) -> Any:
        ibm_vpc = require("ibm_vpc", "ibm", "IBM Cloud VPC")
        from ibm_cloud_sdk_core.authenticators import IAMAuthenticator
        from ibm_cloud_sdk_core.utils import read_external_sources

        config = read_external_sources("vpc")
        try:
            if config.get("AUTH_TYPE") or config.get("AUTHTYPE") or config.get("APIKEY"):
                service = ibm_vpc.VpcV1.new_instance(version=API_VERSION)
            else:
                # The ibmcloud CLI's and Terraform's variables, which the SDK itself does not read
                # (VPC_AUTH_URL still names another IAM, as for the SDK's own settings).
                apikey = os.environ.get("IBMCLOUD_API_KEY") or os.environ.get("IC_API_KEY")
                if not apikey:
                    raise SpecError(f"no IBM Cloud credentials: {CREDENTIALS_HELP}")
                service = ibm_vpc.VpcV1(version=API_VERSION, authenticator=IAMAuthenticator(apikey, url=config.get("AUTH_URL")))
                service.configure_service("vpc")
        except ValueError as exc:
            raise SpecError(f"IBM Cloud credentials are incomplete ({_short(exc)}): {CREDENTIALS_HELP}") from None
        if not config.get("URL"):
            url = ibm_vpc.VpcV1.get_service_url_for_region(self.region)
            if url is None:
                known = ", ".join(sorted(ibm_vpc.VpcV1.REGIONAL_ENDPOINTS))
                raise SpecError(f"unknown IBM Cloud region {self.region!r}: one of {known}")
            service.set_service_url(url)
        return service

    def _call(self, method: str, *args: Any, missing_ok: bool = False, **kwargs: Any) -> Any:
        """One SDK call; an API error becomes one line (None for a 404 when missing_ok)."""
        from ibm_cloud_sdk_core import ApiException

        try:
            return getattr(self.vpc, method)(*args, **kwargs).get_result()
        except ApiException as exc:
            if missing_ok and _status(exc) == 404:
                return None
            # IAM refusing the key to a token fails the first VPC call too: that is a credentials problem.
            from_iam = str(getattr(exc.http_response, "url", "")).endswith("/identity/token")
            if _status(exc) in (401, 403) or from_iam:
                raise SpecError(f"IBM Cloud did not accept the credentials ({_status(exc)}: {_short(exc.message)}): {CREDENTIALS_HELP}") from None
            raise GaudiNbError(f"IBM Cloud VPC {method} failed ({_status(exc)}): {_short(exc.message)}") from None
        except OSError as exc:  # requests' connection errors are OSErrors
            raise GaudiNbError(f"IBM Cloud VPC ({self.vpc.service_url}) cannot be reached: {_short(exc)}") from None

    def _all(self, method: str, key: str, **kwargs: Any) -> Iterator[Dict[str, Any]]:
        """Every item of a paginated list (the `next.href` carries the start token)."""
        from ibm_cloud_sdk_core import get_query_param

        start = None
        while True:
            page = self._call(method, start=start, **kwargs) if start else self._call(method, **kwargs)
            yield from page.get(key, [])
            start = get_query_param((page.get("next") or {}).get("href"), "start")
            if not start:
                return

    # ---- bootstrap: image, key, network, security group ---------------------------

    def bootstrap_instances(self, request: ProvisionRequest) -> Resources:
        self._check_request(request)
        # Everything that only reads comes first, so a refusal leaves nothing behind.
        profile = self._profile(request)
        resources = Resources()
        resources.network["image"] = self._image(request.image)
        subnet = self._subnet(profile, request.count, resources)
        resources.network.update(subnet=subnet["id"], vpc=subnet["vpc"]["id"], zone=subnet["zone"]["name"])
        try:
            resources.key = self._key(request, resources)
            resources.security_group = self._security_group(request, subnet["vpc"]["id"], resources)
        except BaseException:
            self.cleanup(resources)
            raise
        return resources

    def _check_request(self, request: ProvisionRequest) -> None:
        if request.instance_type not in GAUDI_PROFILES:
            known = ", ".join(f"{k} ({v})" for k, v in GAUDI_PROFILES.items())
            raise SpecError(f"unknown IBM Cloud instance type {request.instance_type!r}: the Gaudi profiles are {known}")
        _ssh_cidr(request.ssh_from)
        last = f"{PREFIX}{request.name}-{max(request.count - 1, 0)}"
        if not NAME_RE.match(request.name) or len(last) > 63:
            raise SpecError(
                f"IBM Cloud names allow lowercase letters, digits and hyphens, starting with a letter "
                f"(at most {63 - len(last) + len(request.name)} characters here): pass --name like 'gaudi1', not {request.name!r}"
            )

    def _profile(self, request: ProvisionRequest) -> Dict[str, Any]:
        profile = self._call("get_instance_profile", request.instance_type, missing_ok=True)
        if profile is None:
            raise SpecError(f"IBM Cloud region {self.region} does not offer {request.instance_type}: try us-east, us-south or eu-de")
        if request.spot:
            offered = profile.get("availability_class") or {}
            classes = offered.get("values") or [offered.get("value") or "standard"]
            if "spot" not in classes:
                raise SpecError(f"IBM Cloud does not offer {request.instance_type} as spot in {self.region}: leave out --spot")
        return profile

    def _image(self, wanted: Optional[str]) -> str:
        if wanted:
            # An image's name or its id, as `ibmcloud is images` shows them.
            found = next(iter(self._all("list_images", "images", name=wanted)), None)
            image = found or self._call("get_image", wanted, missing_ok=True)
            if image is None:
                raise SpecError(f"no IBM Cloud image {wanted!r} in {self.region}: pass an image id or name from `ibmcloud is images`")
            return image["id"]
        images = [
            i for i in self._all("list_images", "images")
            if i.get("status") == "available" and (i.get("operating_system") or {}).get("architecture", "amd64") == "amd64"
        ]
        for pattern in IMAGE_PATTERNS:
            matches = [i for i in images if pattern.search(i.get("name", ""))]
            if matches:
                # The newest of the best kind (a later Gaudi software release, a later Ubuntu point release).
                return max(matches, key=lambda i: i.get("created_at", ""))["id"]
        raise NotFoundError(f"no Intel Gaudi or Ubuntu 22.04 image in IBM Cloud {self.region}: pass --image ID")

    def _key(self, request: ProvisionRequest, resources: Resources) -> str:
        fields = request.public_key.split()
        if len(fields) < 2 or fields[0] not in ("ssh-rsa", "ssh-ed25519"):
            raise SpecError("IBM Cloud takes RSA or Ed25519 SSH keys: give an ssh-rsa or ssh-ed25519 public key")
        try:
            blob = base64.b64decode(fields[1], validate=True)
        except ValueError:
            raise SpecError("the SSH public key is not valid base64: give the line from your .pub file") from None
        fingerprint = "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
        for key in self._all("list_keys", "keys"):
            same = key.get("fingerprint") == fingerprint or key.get("public_key", "").split()[:2] == fields[:2]
            if same:
                return key["id"]
        key = self._call(
            "create_key",
            " ".join(fields[:2]),
            name=f"{PREFIX}key-{hashlib.sha256(blob).hexdigest()[:12]}",
            type="ed25519" if fields[0] == "ssh-ed25519" else "rsa",
        )
        resources.created.append(("key", key["id"]))
        return key["id"]

    def _subnet(self, profile: Dict[str, Any], count: int, resources: Resources) -> Dict[str, Any]:
        zones = {z["name"] for z in profile.get("zones") or []}
        subnets = list(self._all("list_subnets", "subnets"))
        wanted = os.environ.get("GAUDI_NB_IBM_SUBNET")
        if wanted:
            named = [s for s in subnets if wanted in (s["id"], s.get("name"))]
            if not named:
                names = ", ".join(s.get("name", s["id"]) for s in subnets) or "none"
                raise SpecError(f"GAUDI_NB_IBM_SUBNET={wanted} is not a subnet in IBM Cloud {self.region} (subnets: {names})")
            return named[0]
        vpcs = sorted(self._all("list_vpcs", "vpcs"), key=lambda v: v.get("created_at", ""))
        create = (
            f"`ibmcloud is vpc-create gaudi-nb` and `ibmcloud is subnet-create gaudi-nb-subnet gaudi-nb "
            f"--zone {sorted(zones)[0] if zones else self.region + '-1'} --ipv4-address-count 256`"
        )
        if not vpcs:
            raise NotFoundError(f"no VPC in IBM Cloud {self.region}: create one with a subnet, {create}")
        # IBM has no default VPC: the region's oldest VPC plays that part (GAUDI_NB_IBM_SUBNET picks another).
        for vpc in vpcs:
            usable = [
                s for s in subnets
                if s["vpc"]["id"] == vpc["id"]
                and (not zones or s["zone"]["name"] in zones)
                and s.get("available_ipv4_address_count", count) >= count
            ]
            if usable:
                chosen = min(usable, key=lambda s: s.get("created_at", ""))
                if len(vpcs) > 1:
                    resources.network.setdefault("warnings", []).append(
                        f"{len(vpcs)} VPCs in {self.region}: using subnet {chosen.get('name')} of VPC {vpc.get('name')} "
                        f"(zone {chosen['zone']['name']}); set GAUDI_NB_IBM_SUBNET to choose another")
                return chosen
        where = f" in a zone that offers {profile.get('name')} ({', '.join(sorted(zones))})" if zones else ""
        raise NotFoundError(f"no subnet with room for {count} machine(s){where} in IBM Cloud {self.region}: {create}, or set GAUDI_NB_IBM_SUBNET")

    def _security_group(self, request: ProvisionRequest, vpc_id: str, resources: Resources) -> str:
        name = f"{PREFIX}{request.name}"
        ssh_from = _ssh_cidr(request.ssh_from)
        group = next((g for g in self._all("list_security_groups", "security_groups", vpc_id=vpc_id) if g.get("name") == name), None)
        if group is None:
            # Outbound is open (package installs, checkpoints); inbound is SSH from one place
            # and anything from the group's own machines (collectives between nodes).
            group = self._call(
                "create_security_group",
                {"id": vpc_id},
                name=name,
                rules=[
                    {"direction": "inbound", "protocol": "tcp", "port_min": 22, "port_max": 22,
                     "ip_version": "ipv4", "remote": {"cidr_block": ssh_from}},
                    {"direction": "outbound", "protocol": "any", "ip_version": "ipv4", "remote": {"cidr_block": "0.0.0.0/0"}},
                ],
            )
        # Created by an earlier provision of this group (its cleanup did not run) counts as ours too.
        resources.created.append(("security_group", group["id"]))
        rules = group.get("rules") or []
        has_ssh = any(
            r.get("direction") == "inbound" and r.get("protocol") == "tcp" and r.get("port_min") == 22
            and (r.get("remote") or {}).get("cidr_block") == ssh_from for r in rules
        )
        if not has_ssh:
            self._call("create_security_group_rule", group["id"], {
                "direction": "inbound", "protocol": "tcp", "port_min": 22, "port_max": 22,
                "ip_version": "ipv4", "remote": {"cidr_block": ssh_from}})
        # The group can name itself as a remote only once it exists.
        if not any(r.get("direction") == "inbound" and (r.get("remote") or {}).get("id") == group["id"] for r in rules):
            self._call("create_security_group_rule", group["id"], {
                "direction": "inbound", "protocol": "any", "ip_version": "ipv4", "remote": {"id": group["id"]}})
        return group["id"]

    # ---- instances --------------------------------------------------------------------

    def run_instances(self, request: ProvisionRequest, resources: Resources) -> List[Instance]:
        self._check_request(request)
        # Two groups of one name would become one (the name is all IBM keeps), and `down` would take both.
        existing = [i.node for i in self.query_instances(group=request.name) if i.state != "terminated"]
        if existing:
            raise SpecError(f"IBM Cloud {self.region} already has machines of a group '{request.name}' ({', '.join(existing)}): pick another --name")
        made: List[str] = []
        try:
            for index in range(request.count):
                name = f"{PREFIX}{request.name}-{index}"
                prototype: Dict[str, Any] = {
                    "name": name,
                    "profile": {"name": request.instance_type},
                    "image": {"id": resources.network["image"]},
                    "keys": [{"id": resources.key}],
                    "vpc": {"id": resources.network["vpc"]},
                    "zone": {"name": resources.network["zone"]},
                    "primary_network_interface": {
                        "name": "eth0",
                        "subnet": {"id": resources.network["subnet"]},
                        "security_groups": [{"id": resources.security_group}],
                    },
                }
                if request.spot:
                    prototype["availability"] = {"class": "spot"}
                trusted = os.environ.get("GAUDI_NB_IBM_TRUSTED_PROFILE")
                if trusted:
                    # The machine's own identity (VPC_AUTH_TYPE=vpc on it), which the autostop watchdog
                    # needs to stop it; the metadata service hands that identity out, so it is on only then.
                    prototype["default_trusted_profile"] = {"target": {"id": trusted}, "auto_link": True}
                    prototype["metadata_service"] = {"enabled": True}
                instance = self._call("create_instance", prototype)
                made.append(instance["id"])
                # A floating IP is the machine's public address; without one SSH cannot reach it.
                self._call("create_floating_ip", {
                    "name": name, "target": {"id": instance["primary_network_interface"]["id"]}})
        except BaseException:
            # Nothing half-made stays billed: what this call created goes again, and is
            # waited for, so the caller's cleanup finds the security group unused.
            if made:
                self.terminate_instances(made)
                try:
                    self.wait_instances(made, "terminated", timeout_s=300)
                except GaudiNbError:
                    pass
            raise
        return self.query_instances(ids=made)

    def wait_instances(self, ids: List[str], state: str, timeout_s: float = 600) -> List[Instance]:
        deadline = time.monotonic() + timeout_s
        pause = 0.2
        while True:
            found = self.query_instances(ids=ids)
            if state == "terminated":
                left = [i.id for i in found]
                released = [f for i in ids for f in self._released.get(i, [])]
                billed = [f for f in released if self._call("get_floating_ip", f, missing_ok=True) is not None]
                if not left and not billed:
                    return []
                waiting = ", ".join(left + billed)
            else:
                failed = [i for i in found if i.state == "failed"]
                if failed:
                    why = "; ".join(f"{i.node}: {i.extra.get('reason') or 'no reason given'}" for i in failed)
                    raise GaudiNbError(f"IBM Cloud could not start {why}")
                gone = sorted(set(ids) - {i.id for i in found})
                if gone:
                    raise GaudiNbError(f"IBM Cloud instance(s) {', '.join(gone)} no longer exist")
                if all(i.state == state for i in found):
                    return found
                waiting = ", ".join(f"{i.node} {i.state}" for i in found if i.state != state)
            if time.monotonic() >= deadline:
                raise GaudiNbError(f"IBM Cloud machines not {state} after {timeout_s:.0f} s ({waiting}): see `ibmcloud is instances`")
            time.sleep(pause)
            pause = min(pause * 1.5, 5.0)

    def query_instances(self, group: Optional[str] = None, ids: Optional[List[str]] = None) -> List[Instance]:
        if ids is not None:
            raw = [r for r in (self._call("get_instance", i, missing_ok=True) for i in ids) if r is not None]
        else:
            pattern = re.compile(rf"^{re.escape(PREFIX)}{re.escape(group) if group else '.+'}-\d+$")
            raw = [r for r in self._all("list_instances", "instances") if pattern.match(r.get("name", ""))]
        if not raw:
            return []
        by_target = {
            (f.get("target") or {}).get("id"): f for f in self._all("list_floating_ips", "floating_ips") if f.get("target")
        }
        return [self._instance(r, by_target) for r in raw]

    def _instance(self, raw: Dict[str, Any], by_target: Dict[Optional[str], Dict[str, Any]]) -> Instance:
        nic = raw.get("primary_network_interface") or {}
        floating = by_target.get(nic.get("id")) or {}
        reasons = raw.get("status_reasons") or []
        return Instance(
            id=raw["id"],
            node=raw["name"][len(PREFIX):] if raw["name"].startswith(PREFIX) else raw["name"],
            state=STATES.get(raw.get("status", ""), "pending"),
            instance_type=(raw.get("profile") or {}).get("name", ""),
            region=self.region,
            public_ip=floating.get("address"),
            private_ip=(nic.get("primary_ip") or {}).get("address"),
            launched_at=_epoch(raw.get("created_at")),
            extra={
                "floating_ip": floating.get("id"),
                "network_interface": nic.get("id"),
                "zone": (raw.get("zone") or {}).get("name"),
                "vpc": (raw.get("vpc") or {}).get("id"),
                "status": raw.get("status"),
                "reason": "; ".join(_short(r.get("message", "")) for r in reasons),
            },
        )

    def stop_instances(self, ids: List[str]) -> None:
        for instance_id in ids:
            self._call("create_instance_action", instance_id, "stop")

    def start_instances(self, ids: List[str]) -> None:
        for instance_id in ids:
            self._call("create_instance_action", instance_id, "start")

    def terminate_instances(self, ids: List[str]) -> None:
        for instance_id in ids:
            raw = self._call("get_instance", instance_id, missing_ok=True)
            if raw is None:
                continue
            nics = [raw.get("primary_network_interface") or {}] + list(raw.get("network_interfaces") or [])
            released = self._released.setdefault(instance_id, [])
            # Floating IPs first: deleting the instance would leave them unbound, still billed.
            for nic_id in {n.get("id") for n in nics if n.get("id")}:
                for floating in self._all("list_floating_ips", "floating_ips", target_id=nic_id):
                    self._call("delete_floating_ip", floating["id"], missing_ok=True)
                    released.append(floating["id"])
            if raw.get("status") != "deleting":
                self._call("delete_instance", instance_id, missing_ok=True)

    def release_addresses(self, ids: List[str], nodes: List[str]) -> List[str]:
        """Delete the unbound floating IPs of these machines (named as the machine is, gaudi-nb-NODE): a machine
        deleted elsewhere (the console, autostop) leaves its floating IP behind, unbound and billed."""
        names = {f"{PREFIX}{node}" for node in nodes}
        left = [f["id"] for f in self._all("list_floating_ips", "floating_ips") if f.get("name") in names and not f.get("target")]
        for floating_id in left:
            self._call("delete_floating_ip", floating_id, missing_ok=True)
        return left

    def may_act(self, instance_id: str, action: str) -> Optional[str]:
        """IBM has no dry run: a token (the machine's trusted profile) that reads this instance is what can be proven."""
        try:
            return None if self._call("get_instance", instance_id) else "IBM Cloud does not know this instance"
        except GaudiNbError as exc:
            return str(exc)[:300]

    # ---- cleanup ------------------------------------------------------------------------

    def cleanup(self, resources: Resources) -> List[Tuple[str, str]]:
        from ibm_cloud_sdk_core import ApiException

        removed: List[Tuple[str, str]] = []
        unused: Dict[str, Callable[[str], bool]] = {"security_group": self._group_unused, "key": self._key_unused}
        delete = {"security_group": "delete_security_group", "key": "delete_key"}
        for kind, resource_id in resources.created:
            if kind not in delete or not unused[kind](resource_id):
                continue
            try:
                getattr(self.vpc, delete[kind])(resource_id)
            except ApiException as exc:
                # 409: in use after all (a machine still being deleted), so kept; 404: already gone.
                if _status(exc) in (404, 409):
                    continue
                raise GaudiNbError(f"IBM Cloud VPC could not remove {kind} {resource_id} ({_status(exc)}): {_short(exc.message)}") from None
            removed.append((kind, resource_id))
        return removed

    def _group_unused(self, group_id: str) -> bool:
        group = self._call("get_security_group", group_id, missing_ok=True)
        return group is not None and not group.get("targets")

    def _key_unused(self, key_id: str) -> bool:
        # A key is only read when a machine first boots, but one that another gaudi_nb
        # group reused is kept while that group's machines live.
        for raw in self._all("list_instances", "instances"):
            if not raw.get("name", "").startswith(PREFIX) or raw.get("status") == "deleting":
                continue
            init = self._call("get_instance_initialization", raw["id"], missing_ok=True) or {}
            if any(k.get("id") == key_id for k in init.get("keys") or []):
                return False
        return self._call("get_key", key_id, missing_ok=True) is not None


def _status(exc: Any) -> int:
    """An ApiException's HTTP status (`status_code` in recent ibm-cloud-sdk-core, `code` before)."""
    return getattr(exc, "status_code", None) or exc.code


def _ssh_cidr(text: str) -> str:
    """The CIDR block SSH is admitted from, as IBM's rules take it (IPv4; a bare address is a /32)."""
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise SpecError(f"--ssh-from {text!r} is not an address or CIDR block like 203.0.113.0/24") from None
    if network.version != 4:
        raise SpecError(f"gaudi_nb's IBM Cloud security group rules are IPv4: pass --ssh-from as an IPv4 CIDR, not {text}")
    return str(network)


def _epoch(stamp: Optional[str]) -> Optional[float]:
    if not stamp:
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
