"""AWS EC2 provider: Gaudi machines (dl1.24xlarge) with a key pair, a security group, a cluster placement group and EFA, through boto3."""
from __future__ import annotations

import datetime
import hashlib
import os
import re
import time
from typing import Any, Dict, List, Optional, Tuple

from ...errors import GaudiNbError, SpecError, require
from ...gaudi_stack import FIRST_GEN_PIN
from .base import TAG_GROUP, TAG_MANAGED, TAG_NODE, TAG_OWNER, Capabilities, Instance, ProvisionRequest, Resources

# The Habana deep-learning AMIs AWS has published ("Deep Learning AMI Habana PyTorch 1.10.0 SynapseAI 1.2.0
# (Ubuntu 18.04) DATE"; AWS's DLAMI release notes list Habana PyTorch SynapseAI images for Ubuntu 18.04 and
# Amazon Linux 2); the newest Ubuntu one within the first-generation pin wins (gaudi_stack: Gaudi software 1.21 or
# older, IMAGE_RELEASE, so a newer image is never picked for DL1). Owners: Amazon's own, or a copy in the caller's
# account; never any public image that merely carries the name. Terraform's ami_name_filter and ami_name_regex are
# these two strings (tests/test_infra.py). That AWS publishes one with Gaudi software 1.21 could not be confirmed
# (none for Ubuntu 22.04, which 1.21 needs, was found), hence no release in the pattern, and --image.
IMAGE_NAME = "*Deep Learning AMI Habana PyTorch*SynapseAI*(Ubuntu*"
IMAGE_RELEASE = r"SynapseAI (0|1\.([0-9]|1[0-9]|2[01]))\."  # SynapseAI 1.21 or older (RE2 and Python alike)
IMAGE_OWNERS = ["amazon", "self"]
SSH_USER = "ubuntu"  # the Habana AMIs are Ubuntu
# EFA interfaces an instance type takes (one per network card). DL1 has four 100 Gbps EFA ENIs:
# https://aws.amazon.com/blogs/compute/amazon-ec2-dl1-instances-deep-dive/
EFA_INTERFACES = {"dl1.24xlarge": 4}
# What a machine runs at its first boot, as root: pdsh, which DeepSpeed's launcher needs on node 0 of a run
# across nodes (a non-root bootstrap over SSH cannot install it). Best effort: the image may have no apt.
FIRST_BOOT = "#!/bin/bash\n(apt-get update && apt-get install -y pdsh) >/var/log/gaudi-nb-first-boot.log 2>&1 || true\n"
# an IAM instance profile (name or ARN) for the machines: what they act as, e.g. when autostop stops them
INSTANCE_PROFILE_VARIABLE = "GAUDI_NB_AWS_INSTANCE_PROFILE"
PREFIX = "gaudi_nb-"
TAG_INSTANCE = "gaudi_nb:instance"  # on an Elastic IP: the machine it was given to, so terminating releases it  # names of what gaudi_nb creates, so they read as ours in the console

# EC2's instance states in base.Instance's words; shutting-down is on its way to terminated and
# no longer runs, so it reads as stopping until EC2 says terminated.
STATES = {"pending": "pending", "running": "running", "stopping": "stopping", "stopped": "stopped", "shutting-down": "stopping", "terminated": "terminated"}
LIVE_STATES = ["pending", "running", "shutting-down", "stopping", "stopped"]

CREDENTIALS_HELP = (
    "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), "
    "run `aws configure` or `aws sso login`, or run where an instance role provides them"
)
# error codes that mean "who you are" is the problem, not the request
AUTH_CODES = {"AuthFailure", "InvalidClientTokenId", "UnrecognizedClientException", "SignatureDoesNotMatch", "ExpiredToken", "RequestExpired", "OptInRequired"}


def efa_interfaces(instance_type: str) -> int:
    return EFA_INTERFACES.get(instance_type.lower(), 0)


def tags(request: ProvisionRequest, **more: str) -> List[Dict[str, str]]:
    """The tags on everything gaudi_nb makes for a group, as EC2 takes them."""
    values = {TAG_MANAGED: "true", TAG_OWNER: request.owner, TAG_GROUP: request.name, **more}
    return [{"Key": key, "Value": value} for key, value in values.items()]


def run_request(request: ProvisionRequest, resources: Resources) -> Dict[str, Any]:
    """The run_instances arguments for a group: pure, so what reaches EC2 is pinned by a test.

    Several machines of a type with EFA get every EFA interface the type has (card 0 first, the
    rest as device 1 on their own cards, as EC2 requires) and the group's cluster placement group;
    one machine gets a plain interface with a public address. EC2 refuses to auto-assign a public
    address when an instance has several interfaces, so those get an Elastic IP once they run.
    """
    subnet = resources.network["subnet"]
    cards = efa_interfaces(request.instance_type) if request.count > 1 else 0
    if cards:
        interfaces = [
            {"NetworkCardIndex": card, "DeviceIndex": 0 if card == 0 else 1, "SubnetId": subnet, "Groups": [resources.security_group],
             "InterfaceType": "efa", "DeleteOnTermination": True}
            for card in range(cards)
        ]
    else:
        interfaces = [{"DeviceIndex": 0, "SubnetId": subnet, "Groups": [resources.security_group], "AssociatePublicIpAddress": True, "DeleteOnTermination": True}]
    arguments: Dict[str, Any] = {
        "ImageId": resources.network["image"],
        "InstanceType": request.instance_type,
        "MinCount": request.count,  # all or none: half a cluster is not what was asked for
        "MaxCount": request.count,
        "KeyName": resources.key,
        "NetworkInterfaces": interfaces,
        "TagSpecifications": [
            {"ResourceType": "instance", "Tags": tags(request, Name=request.name)},
            {"ResourceType": "volume", "Tags": tags(request)},
            {"ResourceType": "network-interface", "Tags": tags(request)},
        ],
    }
    # IMDSv2 only: a process on the machine tricked into fetching a URL (SSRF) cannot read the role's
    # credentials with one GET; 2 hops so a container on the machine (the Gaudi image) reaches it, as infra/terraform does
    arguments["MetadataOptions"] = {"HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 2}
    if resources.placement_group:
        arguments["Placement"] = {"GroupName": resources.placement_group}
    arguments["UserData"] = FIRST_BOOT  # boto3 base64-encodes it
    profile = resources.network.get("instance_profile")
    if profile:
        # the machine's own credentials (the autostop watchdog stops it with them)
        arguments["IamInstanceProfile"] = {"Arn": profile} if profile.startswith("arn:") else {"Name": profile}
    if request.spot:
        # one-time: a reclaimed machine is gone, not restarted behind the user's back
        arguments["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}}
    return arguments


def key_pair_name(public_key: str, owner: str) -> str:
    """One EC2 key pair per owner and key: the same key imports once and is reused by every group."""
    fingerprint = hashlib.sha256(public_key.split()[1].encode() if len(public_key.split()) > 1 else public_key.encode()).hexdigest()[:12]
    return f"{PREFIX}{re.sub(r'[^A-Za-z0-9._-]', '-', owner)[:40]}-{fingerprint}"


class AwsProvider:
    """EC2 in one region, through boto3's standard credential chain (and AWS_ENDPOINT_URL, as boto3 reads it)."""

    name = "aws"
    ssh_user = SSH_USER
    capabilities = Capabilities(spot=True, placement_groups=True, stop=True, credentials_help=CREDENTIALS_HELP)

    def __init__(self, region: str) -> None:
        self.region = region
        self._client: Any = None

    # -- the client and its errors --------------------------------------------------------
    @property
    def ec2(self) -> Any:
        if self._client is None:
            boto3 = require("boto3", "aws", "provisioning on AWS")
            session = boto3.session.Session(region_name=self.region)
            if session.get_credentials() is None:
                raise SpecError(CREDENTIALS_HELP)
            self._client = session.client("ec2")
        return self._client

    def _call(self, operation: str, **arguments: Any) -> Dict[str, Any]:
        """One EC2 call; botocore's errors become one line that names the operation."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError, ProfileNotFound
        from botocore.parsers import ResponseParserError

        try:
            return getattr(self.ec2, operation)(**arguments)
        except (NoCredentialsError, PartialCredentialsError):
            raise SpecError(CREDENTIALS_HELP) from None
        except ProfileNotFound as exc:
            raise SpecError(f"{exc}: name a profile in ~/.aws/config with AWS_PROFILE, or unset it") from None
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code, message = error.get("Code", "Error"), str(error.get("Message", "")).splitlines()[0] if error.get("Message") else ""
            if code in AUTH_CODES:
                raise SpecError(f"AWS did not accept the credentials ({code}: {message}); {CREDENTIALS_HELP.replace('no AWS credentials found: ', '')}") from None
            raised = AwsError(f"AWS {operation} in {self.region}: {code}: {message}")
            raised.code = code
            raise raised from None
        except (BotoCoreError, ResponseParserError) as exc:  # no answer, or one that is not EC2's XML (a proxy's error page)
            raise AwsError(f"AWS {operation} in {self.region}: {str(exc).splitlines()[0].split('. Further retries')[0]}") from None

    # -- bootstrap: image, network, key pair, security group, placement group ----------------
    def bootstrap_instances(self, request: ProvisionRequest) -> Resources:
        """Find or make what the group's machines need; nothing is created before the image and network are found."""
        image = request.image or self.find_image()
        vpc, subnet = self._network(request.instance_type)
        warnings = [f"{request.instance_type}: {FIRST_GEN_PIN}"] if request.instance_type.startswith("dl1.") else []
        resources = Resources(network={"image": image, "vpc": vpc, "subnet": subnet, "group": request.name, "warnings": warnings,
                                       "instance_profile": os.environ.get(INSTANCE_PROFILE_VARIABLE) or None})
        try:
            resources.key = self._key_pair(request, resources)
            resources.security_group = self._security_group(request, resources)
            if request.count > 1 and efa_interfaces(request.instance_type):
                resources.placement_group = self._placement_group(request, resources)
        except BaseException:
            self.cleanup(resources)  # what this call made goes again: a failed provision leaves nothing
            raise
        return resources

    def find_image(self) -> str:
        # (no architecture filter: DL1 is x86_64 only, so every Habana image is)
        images = self._call("describe_images", Owners=IMAGE_OWNERS, Filters=[
            {"Name": "name", "Values": [IMAGE_NAME]}, {"Name": "state", "Values": ["available"]},
        ]).get("Images", [])
        images = [image for image in images if re.search(IMAGE_RELEASE, image.get("Name") or "")]  # the first-generation pin
        if not images:
            raise SpecError(f"no Habana deep learning image with Gaudi software 1.21 or older (name like '{IMAGE_NAME}') in {self.region}: "
                            f"{FIRST_GEN_PIN}, and that AWS publishes such an image could not be confirmed (none for Ubuntu 22.04 was found): "
                            "pass --image AMI_ID of an image with Gaudi software 1.21")
        return max(images, key=lambda image: image.get("CreationDate") or "")["ImageId"]

    def _network(self, instance_type: str) -> Tuple[str, str]:
        """The default VPC and a default subnet in a zone that offers the type (any default subnet when EC2 does not say)."""
        vpcs = self._call("describe_vpcs", Filters=[{"Name": "is-default", "Values": ["true"]}]).get("Vpcs", [])
        if not vpcs:
            raise SpecError(f"no default VPC in {self.region}: create one with `aws ec2 create-default-vpc --region {self.region}`")
        vpc = vpcs[0]["VpcId"]
        subnets = self._call("describe_subnets", Filters=[{"Name": "vpc-id", "Values": [vpc]}, {"Name": "default-for-az", "Values": ["true"]}]).get("Subnets", [])
        if not subnets:
            raise SpecError(f"the default VPC {vpc} in {self.region} has no default subnets: create one with `aws ec2 create-default-subnet`")
        offered = {o["Location"] for o in self._call("describe_instance_type_offerings", LocationType="availability-zone",
                                                     Filters=[{"Name": "instance-type", "Values": [instance_type]}]).get("InstanceTypeOfferings", [])}
        chosen = sorted((s for s in subnets if s["AvailabilityZone"] in offered), key=lambda s: s["AvailabilityZone"]) or sorted(subnets, key=lambda s: s["AvailabilityZone"])
        return vpc, chosen[0]["SubnetId"]

    def _key_pair(self, request: ProvisionRequest, resources: Resources) -> str:
        name = key_pair_name(request.public_key, request.owner)
        try:
            self._call("describe_key_pairs", KeyNames=[name])
        except AwsError as exc:
            if exc.code != "InvalidKeyPair.NotFound":
                raise
            self._call("import_key_pair", KeyName=name, PublicKeyMaterial=request.public_key.encode(),
                       TagSpecifications=[{"ResourceType": "key-pair", "Tags": [{"Key": TAG_MANAGED, "Value": "true"}, {"Key": TAG_OWNER, "Value": request.owner}]}])
        # ours either way (the name says so): cleanup removes it once no machine uses it
        resources.created.append(("key_pair", name))
        return name

    def _security_group(self, request: ProvisionRequest, resources: Resources) -> str:
        name = PREFIX + request.name
        vpc = resources.network["vpc"]
        found = self._call("describe_security_groups", Filters=[{"Name": "group-name", "Values": [name]}, {"Name": "vpc-id", "Values": [vpc]}]).get("SecurityGroups", [])
        if found:
            group = found[0]["GroupId"]
        else:
            group = self._call("create_security_group", GroupName=name, VpcId=vpc, Description=f"gaudi_nb group {request.name}: SSH from {request.ssh_from}, all traffic inside the group",
                               TagSpecifications=[{"ResourceType": "security-group", "Tags": tags(request, Name=name)}])["GroupId"]
        # SSH only from where the user is; everything between the group's machines (EFA and the
        # collectives need it, and EFA also needs the same rule outbound, which EC2's default egress allows)
        for permission in ({"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": request.ssh_from, "Description": "gaudi_nb: SSH from the client"}]}
                           if ":" not in request.ssh_from else
                           {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "Ipv6Ranges": [{"CidrIpv6": request.ssh_from, "Description": "gaudi_nb: SSH from the client"}]},
                           {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": group, "Description": "gaudi_nb: inside the group"}]}):
            try:
                self._call("authorize_security_group_ingress", GroupId=group, IpPermissions=[permission])
            except AwsError as exc:
                if exc.code != "InvalidPermission.Duplicate":
                    raise
        resources.created.append(("security_group", group))
        return group

    def _placement_group(self, request: ProvisionRequest, resources: Resources) -> Optional[str]:
        name = PREFIX + request.name
        try:
            self._call("create_placement_group", GroupName=name, Strategy="cluster",
                       TagSpecifications=[{"ResourceType": "placement-group", "Tags": tags(request)}])
        except AwsError as exc:
            if exc.code != "InvalidPlacementGroup.Duplicate":
                # the machines still work without one, only farther apart: say so and go on
                resources.network["warnings"].append(f"no cluster placement group ({exc}); the machines launch without one")
                return None
        resources.created.append(("placement_group", name))
        return name

    # -- machines ---------------------------------------------------------------------------
    def run_instances(self, request: ProvisionRequest, resources: Resources) -> List[Instance]:
        launched = self._call("run_instances", **run_request(request, resources)).get("Instances", [])
        ids = [item["InstanceId"] for item in launched]
        try:
            instances = []
            for index, item in enumerate(sorted(launched, key=lambda i: i.get("AmiLaunchIndex", 0))):
                node = f"{request.name}-{index}"
                # the per-machine name: run_instances tags every machine alike
                self._tag_new(item["InstanceId"], [{"Key": TAG_NODE, "Value": node}, {"Key": "Name", "Value": node}])
                item.setdefault("Tags", []).extend([{"Key": TAG_NODE, "Value": node}])
                instances.append(self._instance(item))
        except BaseException:
            # the machines run and bill but nobody has recorded them yet (and a Ctrl-C lands here too):
            # they go again, and are waited for, so the caller's cleanup finds the security group unused
            self._terminate_launched(ids)
            raise
        return instances

    def _tag_new(self, instance_id: str, new_tags: List[Dict[str, str]]) -> None:
        """Tag a machine run_instances just made; EC2 is eventually consistent, so a fresh id may be unknown for a few seconds."""
        for delay in (0.5, 1.0, 2.0, 4.0, 0.0):
            try:
                self._call("create_tags", Resources=[instance_id], Tags=new_tags)
                return
            except AwsError as exc:
                if exc.code != "InvalidInstanceID.NotFound" or not delay:
                    raise
            time.sleep(delay)

    def _terminate_launched(self, ids: List[str]) -> None:
        """Best effort after a failed launch: terminate and wait; the failure that got here is what the caller sees."""
        if not ids:
            return
        try:
            self.terminate_instances(ids)
            self.wait_instances(ids, "terminated", timeout_s=300)
        except GaudiNbError:
            pass

    def wait_instances(self, ids: List[str], state: str, timeout_s: float = 600) -> List[Instance]:
        """Poll until every machine is in `state` (base words); machines that run get their public address."""
        deadline = time.monotonic() + timeout_s
        delay = 0.5
        while True:
            instances = self.query_instances(ids=ids)
            if state == "running":
                instances = self._give_public_addresses(instances)
            if instances and len(instances) == len(ids) and all(i.state == state for i in instances):
                return instances
            if state == "running" and any(i.state in ("stopping", "terminated") for i in instances):
                gone = [f"{i.node or i.id} {i.state}" for i in instances if i.state in ("stopping", "terminated")]
                raise GaudiNbError(f"machines stopped before they ran ({', '.join(gone)}): EC2 gave no capacity or reclaimed a spot machine")
            if time.monotonic() > deadline:
                states = ", ".join(f"{i.node or i.id} {i.state}" for i in instances)
                raise GaudiNbError(f"machines not {state} after {timeout_s:.0f} s ({states})")
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _give_public_addresses(self, instances: List[Instance]) -> List[Instance]:
        """An Elastic IP for each running machine that has several interfaces and no public address yet."""
        changed = False
        for instance in instances:
            if instance.state != "running" or instance.public_ip or not instance.extra.get("primary_interface") or instance.extra.get("interfaces", 1) < 2:
                continue
            allocation = self._call("allocate_address", Domain="vpc", TagSpecifications=[{"ResourceType": "elastic-ip", "Tags": [
                {"Key": TAG_MANAGED, "Value": "true"}, {"Key": TAG_NODE, "Value": instance.node}, {"Key": TAG_GROUP, "Value": instance.extra.get("group", "")},
                {"Key": TAG_INSTANCE, "Value": instance.id}]}])
            self._call("associate_address", AllocationId=allocation["AllocationId"], NetworkInterfaceId=instance.extra["primary_interface"])
            changed = True
        return self.query_instances(ids=[i.id for i in instances]) if changed else instances

    def query_instances(self, group: Optional[str] = None, ids: Optional[List[str]] = None) -> List[Instance]:
        arguments: Dict[str, Any] = {}
        if ids:
            arguments["InstanceIds"] = list(ids)
        if group:
            arguments["Filters"] = [{"Name": f"tag:{TAG_GROUP}", "Values": [group]}, {"Name": f"tag:{TAG_MANAGED}", "Values": ["true"]}]
        found: List[Instance] = []
        token: Optional[str] = None
        while True:
            page = self._call("describe_instances", **arguments, **({"NextToken": token} if token else {}))
            found.extend(self._instance(item) for reservation in page.get("Reservations", []) for item in reservation.get("Instances", []))
            token = page.get("NextToken")
            if not token:
                return found

    def stop_instances(self, ids: List[str]) -> None:
        if ids:
            self._call("stop_instances", InstanceIds=list(ids))

    def start_instances(self, ids: List[str]) -> None:
        if ids:
            self._call("start_instances", InstanceIds=list(ids))

    def terminate_instances(self, ids: List[str]) -> None:
        """Terminate, then release the Elastic IPs gaudi_nb gave them (an idle Elastic IP is billed).

        Terminating comes first: a role that may only terminate (autostop's) still stops the bill
        for the machine; `down` releases the addresses again (release_addresses) once they are gone."""
        if not ids:
            return
        self._call("terminate_instances", InstanceIds=list(ids))
        try:
            self.release_addresses(ids, [])
        except AwsError:
            pass  # no right to release addresses here (autostop's role): `gaudi-nb nodes down` does it

    def release_addresses(self, ids: List[str], nodes: List[str]) -> List[str]:
        """Release the Elastic IPs gaudi_nb gave these machines, whether they still exist or not; returns their allocation ids."""
        if not ids:
            return []
        # found by the instance tag gaudi_nb put on them: an address associated through an
        # interface does not always name the instance, and a terminated machine names none
        addresses = self._call("describe_addresses", Filters=[{"Name": f"tag:{TAG_INSTANCE}", "Values": list(ids)}]).get("Addresses", [])
        released = []
        for address in addresses:
            if any(t.get("Key") == TAG_MANAGED for t in address.get("Tags", [])):
                if address.get("AssociationId"):
                    self._call("disassociate_address", AssociationId=address["AssociationId"])
                self._call("release_address", AllocationId=address["AllocationId"])
                released.append(address["AllocationId"])
        return released

    def may_act(self, instance_id: str, action: str) -> Optional[str]:
        """EC2's own answer, without acting: the call with DryRun=True says DryRunOperation where it would have succeeded."""
        operation = "terminate_instances" if action == "terminate" else "stop_instances"
        try:
            self._call(operation, InstanceIds=[instance_id], DryRun=True)
        except AwsError as exc:
            return None if exc.code == "DryRunOperation" else str(exc)[:300]
        except SpecError as exc:  # no credentials on the machine (no instance role)
            return str(exc)
        return None

    def cleanup(self, resources: Resources) -> List[Tuple[str, str]]:
        """Remove what gaudi_nb created once no live machine uses it: the group's placement and security groups, then the key pair."""
        removed: List[Tuple[str, str]] = []
        group = resources.network.get("group")
        group_in_use = bool(group) and any(i.state != "terminated" for i in self.query_instances(group=group))
        for kind, ident in sorted(resources.created, key=lambda item: ("placement_group", "security_group", "key_pair").index(item[0]) if item[0] in ("placement_group", "security_group", "key_pair") else 9):
            if kind in ("placement_group", "security_group") and group_in_use:
                continue
            if kind == "key_pair" and self._call("describe_instances", Filters=[{"Name": "key-name", "Values": [ident]}, {"Name": "instance-state-name", "Values": LIVE_STATES}]).get("Reservations"):
                continue
            if self._delete(kind, ident):
                removed.append((kind, ident))
        return removed

    def _delete(self, kind: str, ident: str) -> bool:
        """Delete one resource; a security group still held by a vanishing interface is retried for a minute."""
        operation = {"placement_group": ("delete_placement_group", "GroupName"), "security_group": ("delete_security_group", "GroupId"), "key_pair": ("delete_key_pair", "KeyName")}[kind]
        deadline = time.monotonic() + 60
        while True:
            try:
                self._call(operation[0], **{operation[1]: ident})
                return True
            except AwsError as exc:
                if exc.code in ("InvalidGroup.NotFound", "InvalidPlacementGroup.Unknown", "InvalidKeyPair.NotFound"):
                    return False  # already gone
                if exc.code not in ("DependencyViolation", "InvalidPlacementGroup.InUse") or time.monotonic() > deadline:
                    raise
                time.sleep(3)

    # -- EC2's description of a machine in base words ------------------------------------------
    def _instance(self, item: Dict[str, Any]) -> Instance:
        tag = {t.get("Key"): t.get("Value") for t in item.get("Tags", [])}
        launched = item.get("LaunchTime")
        interfaces = item.get("NetworkInterfaces") or []
        primary = next((n for n in interfaces if (n.get("Attachment") or {}).get("DeviceIndex") == 0 and (n.get("Attachment") or {}).get("NetworkCardIndex", 0) == 0), None)
        return Instance(
            id=item["InstanceId"],
            node=tag.get(TAG_NODE) or "",
            state=STATES.get((item.get("State") or {}).get("Name", ""), "pending"),
            instance_type=item.get("InstanceType", ""),
            region=self.region,
            public_ip=item.get("PublicIpAddress"),
            private_ip=item.get("PrivateIpAddress"),
            launched_at=launched.timestamp() if launched is not None and hasattr(launched, "timestamp") else None,
            extra={"group": tag.get(TAG_GROUP, ""), "spot": item.get("InstanceLifecycle") == "spot", "interfaces": len(interfaces),
                   "state_changed_at": _transition_time(item.get("StateTransitionReason") or ""),
                   "primary_interface": primary.get("NetworkInterfaceId") if primary else None, "tags": tag},
        )


def _transition_time(reason: str) -> Optional[float]:
    """When EC2 says the machine last changed state: "User initiated (2026-11-30 01:02:03 GMT)"."""
    found = re.search(r"\((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (?:GMT|UTC)\)", reason)
    if not found:
        return None
    return datetime.datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=datetime.timezone.utc).timestamp()


class AwsError(GaudiNbError):
    """An EC2 call failed; `code` is EC2's error code."""

    code: str = ""


__all__ = ["AwsProvider", "efa_interfaces", "key_pair_name", "run_request", "tags"]
