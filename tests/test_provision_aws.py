"""Provisioning on AWS against a real EC2 API (moto in server mode): the CLI, the API and the magic, the request EC2 gets, and what is left after down."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from gaudi_nb.errors import GaudiNbError, SpecError

BIN = Path(sys.executable).parent
SSH_FROM = "203.0.113.7/32"  # TEST-NET-3: an address no real client has
IMAGE_NAME = "Deep Learning AMI Habana PyTorch 2.6.0 SynapseAI 1.21.0 (Ubuntu 22.04) 20250601"


@pytest.fixture
def aws(moto_server, gaudi_home, monkeypatch) -> Dict[str, str]:
    """boto3 (in this process and in the CLI's) pointed at the moto server by the variables a user would set; no other credentials."""
    environment = {
        "AWS_ENDPOINT_URL": moto_server,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-west-2",
        "AWS_SHARED_CREDENTIALS_FILE": str(gaudi_home.parent / "no-credentials"),
        "AWS_CONFIG_FILE": str(gaudi_home.parent / "no-config"),
        "AWS_EC2_METADATA_DISABLED": "true",  # never ask an instance role
    }
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    return environment


def ec2(region: str = "us-west-2") -> Any:
    import boto3

    return boto3.client("ec2", region_name=region)


def habana_image(region: str = "us-west-2") -> str:
    """A Habana-named image in this account ("self"), as a user's copy of the DLAMI would be; moto has none of Amazon's."""
    client = ec2(region)
    found = client.describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [IMAGE_NAME]}])["Images"]
    if found:
        return found[0]["ImageId"]
    return client.register_image(Name=IMAGE_NAME, Architecture="x86_64", RootDeviceName="/dev/sda1", VirtualizationType="hvm",
                                 BlockDeviceMappings=[{"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": 100}}])["ImageId"]


def cloud_state(region: str = "us-west-2") -> Tuple[set, set, set]:
    """Live instances, security groups and key pairs: what a failed provision must not add to."""
    client = ec2(region)
    live = {i["InstanceId"] for r in client.describe_instances(Filters=[{"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}])["Reservations"] for i in r["Instances"]}
    groups = {g["GroupId"] for g in client.describe_security_groups()["SecurityGroups"]}
    keys = {k["KeyName"] for k in client.describe_key_pairs()["KeyPairs"]}
    return live, groups, keys


def cli(*args: str, env: Dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """The installed `gaudi-nb` in a fresh process, as a user runs it."""
    return subprocess.run([str(BIN / "gaudi-nb"), *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, "COLUMNS": "100", **(env or {})})


# -- the acceptance: two dl1.24xlarge through the CLI, then down ----------------------------------


@pytest.mark.slow  # the whole flow through a dozen CLI processes; the API-level tests here stay in the fast lane
def test_two_dl1_machines_through_the_cli_then_down_leaves_nothing(aws, gaudi_home):
    image = habana_image()  # no --image: the name filter finds it
    before = time.time()
    started = time.monotonic()
    made = cli("nodes", "provision", "aws", "--instance-type", "dl1.24xlarge", "--count", "2", "--name", "pair", "--ssh-from", SSH_FROM, "--no-attach", "--json")
    provision_s = time.monotonic() - started
    assert made.returncode == 0, made.stderr
    # DL1 is AWS's only Gaudi, pinned to Gaudi software 1.21 (out of Intel's support matrix from 1.22): said before anything starts
    assert "warning: dl1.24xlarge: first-generation Gaudi (HL-205, AWS dl1.24xlarge) is pinned to Gaudi software 1.21" in made.stderr
    records = json.loads(made.stdout)
    assert [r["name"] for r in records] == ["pair-0", "pair-1"]
    assert {(r["provider"], r["region"], r["instance_type"], r["group"], r["state"]) for r in records} == {("aws", "us-west-2", "dl1.24xlarge", "pair", "running")}
    assert all(r["price_per_hour"] == 13.11 and "catalog" in r["price_source"] for r in records)  # the catalog's us-west-2 rate

    client = ec2()
    ids = [r["instance_id"] for r in records]
    instances = {i["InstanceId"]: i for res in client.describe_instances(InstanceIds=ids)["Reservations"] for i in res["Instances"]}
    resources = records[0]["resources"]
    key_name, group_id = resources["key"], resources["security_group"]
    for record in records:
        instance = instances[record["instance_id"]]
        tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
        assert tags["gaudi_nb"] == "true" and tags["gaudi_nb:group"] == "pair" and tags["gaudi_nb:node"] == record["name"] and tags["gaudi_nb:owner"] == record["owner"]
        assert instance["InstanceType"] == "dl1.24xlarge" and instance["ImageId"] == image and instance["KeyName"] == key_name
        assert instance["State"]["Name"] == "running"
        assert {g["GroupId"] for n in instance["NetworkInterfaces"] for g in n["Groups"]} == {group_id}
        assert record["host"] == instance["PublicIpAddress"] and record["url"] == f"ssh://ubuntu@{instance['PublicIpAddress']}:22"
        assert record["launched_at"] <= instance["LaunchTime"].timestamp() + 1
    # the key pair is this client's gaudi_nb key, made once under GAUDI_NB_HOME
    assert client.describe_key_pairs(KeyNames=[key_name])["KeyPairs"]
    assert (gaudi_home / "keys" / "gaudi_nb_ed25519").stat().st_mode & 0o077 == 0
    assert records[0]["identity_file"] == str(gaudi_home / "keys" / "gaudi_nb_ed25519")
    # SSH from the one address only; all traffic between the group's machines
    (group,) = client.describe_security_groups(GroupIds=[group_id])["SecurityGroups"]
    ssh = [p for p in group["IpPermissions"] if p.get("FromPort") == 22]
    assert [r["CidrIp"] for p in ssh for r in p["IpRanges"]] == [SSH_FROM]
    assert all(r["CidrIp"] != "0.0.0.0/0" for p in group["IpPermissions"] for r in p.get("IpRanges", []))
    inside = [p for p in group["IpPermissions"] if p["IpProtocol"] == "-1"]
    assert [pair["GroupId"] for p in inside for pair in p["UserIdGroupPairs"]] == [group_id] and not inside[0]["IpRanges"]
    assert {t["Key"]: t["Value"] for t in group["Tags"]}["gaudi_nb:group"] == "pair"

    listed = cli("nodes", "list")
    assert listed.returncode == 0 and "pair-0" in listed.stdout and "running" in listed.stdout and "$" in listed.stdout
    time.sleep(1.0)  # a second of billing, so the lifetime below is not zero

    started = time.monotonic()
    gone = cli("nodes", "down", "pair", "--json")
    down_s = time.monotonic() - started
    after = time.time()
    assert gone.returncode == 0, gone.stderr
    ended = json.loads(gone.stdout)
    states = {i["InstanceId"]: i["State"]["Name"] for res in client.describe_instances(InstanceIds=ids)["Reservations"] for i in res["Instances"]}
    assert set(states.values()) == {"terminated"}
    assert not [g for g in client.describe_security_groups()["SecurityGroups"] if g["GroupId"] == group_id]
    assert not [k for k in client.describe_key_pairs()["KeyPairs"] if k["KeyName"] == key_name]
    assert "removed security group" in gone.stderr and "key pair" in gone.stderr
    # the cost record covers each machine's life: from EC2's launch time to after it was terminated
    for record in ended:
        assert record["state"] == "terminated" and before - 1 <= record["launched_at"] <= record["terminated_at"] <= after
        lifetime_h = (record["terminated_at"] - record["launched_at"]) / 3600
        assert lifetime_h * 3600 >= 1.0
        assert record["cost_usd"] == pytest.approx(13.11 * lifetime_h) and record["cost"]["usd"] == record["cost_usd"]
    # kept for the cost history, out of the default list
    assert "pair-0" not in cli("nodes", "list").stdout
    kept = json.loads(cli("nodes", "list", "--all", "--json").stdout)
    assert {r["name"]: r["state"] for r in kept} == {"pair-0": "terminated", "pair-1": "terminated"}
    import gaudi_nb

    said: List[str] = []
    assert {r["state"] for r in gaudi_nb.down("pair", progress=said.append)} == {"terminated"} and said == ["pair: already terminated"]
    print(f"\nprovision 2× dl1.24xlarge --no-attach: {provision_s:.2f} s; down: {down_s:.2f} s (moto)")


# -- bad input: one line, exit 2, nothing created ------------------------------------------------


@pytest.mark.parametrize(
    "args, env, expected",
    [
        (["--instance-type", "dl9.huge"], {}, "unknown aws instance type 'dl9.huge': the Gaudi types aws offers are dl1.24xlarge"),
        (["--instance-type", "p4d.24xlarge"], {}, "p4d.24xlarge is not a Gaudi machine (A100): the Gaudi types aws offers are dl1.24xlarge"),
        (["--instance-type", "dl1.24xlarge", "--region", "eu-west-1"], {}, "dl1.24xlarge is not offered in eu-west-1 (the price catalog lists us-west-2, us-east-1)"),
        (["--instance-type", "dl1.24xlarge"], {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}, "no AWS credentials found: set AWS_ACCESS_KEY_ID"),
        (["--instance-type", "dl1.24xlarge"], {"AWS_PROFILE": "nope", "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}, "The config profile (nope) could not be found"),
        (["--instance-type", "dl1.24xlarge", "--region", "us-east-1"], {}, "that AWS publishes such an image could not be confirmed (none for Ubuntu 22.04 was found): pass --image AMI_ID of an image with Gaudi software 1.21"),
        (["--instance-type", "dl1.24xlarge", "--ssh-from", "not-an-address"], {}, "--ssh-from 'not-an-address' is not an address range"),
        (["--instance-type", "dl1.24xlarge", "--count", "2", "--name", "bad name"], {}, "'bad name' cannot name a node"),
    ],
    ids=["unknown-type", "gpu-type", "region-without-type", "no-credentials", "unknown-profile", "no-image", "bad-cidr", "bad-name"],
)
def test_bad_input_is_one_line_exit_2_and_nothing_is_created(aws, gaudi_home, args, env, expected):
    habana_image()  # us-west-2 has an image, so only what the case breaks can fail
    before = {region: cloud_state(region) for region in ("us-west-2", "us-east-1")}
    ssh_from = [] if "--ssh-from" in args else ["--ssh-from", SSH_FROM]
    result = cli("nodes", "provision", "aws", *args, *ssh_from, "--no-attach", env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert {region: cloud_state(region) for region in ("us-west-2", "us-east-1")} == before
    from gaudi_nb.store import RunStore

    assert RunStore().list_nodes() == []  # the CLI's store: the same GAUDI_NB_HOME


def test_without_ssh_from_an_unknown_public_address_says_to_pass_it():
    from gaudi_nb.nodes.provision import public_address

    with pytest.raises(SpecError, match=r"could not find this machine's public address .*: pass --ssh-from CIDR"):
        public_address("http://127.0.0.1:9/", timeout_s=1)


# -- the API: spot, one machine down at a time, the group's resources kept until the last ----------


def test_api_spot_group_goes_down_one_machine_then_the_rest(aws):
    import gaudi_nb

    messages: List[str] = []
    image = habana_image()
    records = gaudi_nb.provision("aws", instance_type="dl1.24xlarge", count=2, name="spotty", ssh_from=SSH_FROM, spot=True, image=image,
                                 idle_minutes=30, attach=False, progress=messages.append)
    assert [r["name"] for r in records] == ["spotty-0", "spotty-1"] and all(r["idle_minutes"] == 30 for r in records)
    assert "on-demand, a spot machine's most" in records[0]["price_source"]
    assert any("autostop: not started without attaching" in m for m in messages)
    client = ec2()
    instances = [i for res in client.describe_instances(InstanceIds=[r["instance_id"] for r in records])["Reservations"] for i in res["Instances"]]
    assert {i.get("InstanceLifecycle") for i in instances} == {"spot"}
    group_id = records[0]["resources"]["security_group"]

    with pytest.raises(SpecError, match="autostop_action: must be one of 'stop' or 'terminate' \\(got 'explode'\\)"):
        gaudi_nb.provision("aws", instance_type="dl1.24xlarge", name="other", ssh_from=SSH_FROM, image=image, attach=False, autostop_action="explode")
    with pytest.raises(SpecError, match="a node named 'spotty-0' is in the store already"):
        gaudi_nb.provision("aws", instance_type="dl1.24xlarge", name="spotty", ssh_from=SSH_FROM, image=image, attach=False)

    from gaudi_nb.nodes.attach import detach

    with pytest.raises(SpecError, match="spotty-1 is an aws machine gaudi_nb provisioned, still running: gaudi-nb nodes down spotty-1"):
        detach("spotty-1")  # forgetting it would leave it billed with nothing to find it by
    gaudi_nb.down("spotty-1")  # one machine by its own name: the group's security group stays for spotty-0
    states = {i["InstanceId"]: i["State"]["Name"] for res in client.describe_instances(InstanceIds=[r["instance_id"] for r in records])["Reservations"] for i in res["Instances"]}
    assert states == {records[0]["instance_id"]: "running", records[1]["instance_id"]: "terminated"}
    assert client.describe_security_groups(GroupIds=[group_id])["SecurityGroups"]

    ended = gaudi_nb.down("spotty")
    assert {r["state"] for r in ended} == {"terminated"}
    assert not [g for g in client.describe_security_groups()["SecurityGroups"] if g["GroupId"] == group_id]
    with pytest.raises(SpecError, match="no provisioned group or machine named 'nobody'"):
        gaudi_nb.down("nobody")


def test_dl1_is_pinned_to_gaudi_software_1_21_the_image_found_and_the_words_said(aws):
    """Without --image, the newest Habana image within the pin is taken (a newer SynapseAI one is passed over), and
    the provision says the pin in gaudi_stack's words (what `nodes provision aws` prints: the slow CLI test reads it
    there). The group's shared part only: no machine needs to start for the image and the words."""
    from gaudi_nb.gaudi_stack import FIRST_GEN_PIN
    from gaudi_nb.nodes.providers import provider
    from gaudi_nb.nodes.providers.base import ProvisionRequest
    from gaudi_nb.nodes.provision import ensure_key

    pinned = habana_image()
    client = ec2()
    newer = [i["ImageId"] for i in client.describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": ["*SynapseAI 1.22.0*"]}])["Images"]]
    if not newer:
        time.sleep(1.1)  # EC2 dates images to the second: this one is the newest, the one the name pattern alone would take
        newer = [client.register_image(Name="Deep Learning AMI Habana PyTorch 2.7.1 SynapseAI 1.22.0 (Ubuntu 22.04) 20250901", Architecture="x86_64", RootDeviceName="/dev/sda1",
                                       VirtualizationType="hvm", BlockDeviceMappings=[{"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": 100}}])["ImageId"]]
    dates = {i["ImageId"]: i["CreationDate"] for i in client.describe_images(ImageIds=[pinned, *newer])["Images"]}
    assert dates[newer[0]] > dates[pinned]
    cloud = provider("aws", "us-west-2")
    request = ProvisionRequest(provider="aws", instance_type="dl1.24xlarge", count=1, region="us-west-2", name="pinned", ssh_from=SSH_FROM,
                               public_key=ensure_key()[1], owner="tester")
    resources = cloud.bootstrap_instances(request)
    try:
        assert resources.network["image"] == pinned
        assert resources.network["warnings"] == [f"dl1.24xlarge: {FIRST_GEN_PIN}"]
    finally:
        cloud.cleanup(resources)


def test_one_machine_gets_a_public_address_on_a_plain_interface_and_costs_show_in_the_magic(aws, tmp_path, monkeypatch):
    from IPython.core.error import UsageError
    from IPython.core.getipython import get_ipython
    from IPython.testing.globalipapp import start_ipython
    from IPython.utils.capture import capture_output

    monkeypatch.chdir(tmp_path)  # no pyproject.toml defaults above
    start_ipython()  # once per process; later calls return None
    ip = get_ipython()
    ip.run_line_magic("load_ext", "gaudi_nb")
    # a notebook frontend asks for HTML; the terminal shell only formats text/plain
    monkeypatch.setattr(ip.display_formatter, "active_types", ["text/plain", "text/html"])
    with pytest.raises(UsageError, match="unknown aws instance type"):
        ip.run_line_magic("gaudi_provision", f"aws --instance-type dl9.huge --ssh-from {SSH_FROM} --no-attach")
    with capture_output() as captured:
        records = ip.run_line_magic("gaudi_provision", f"aws --instance-type dl1.24xlarge --name solo --ssh-from {SSH_FROM} --image {habana_image()} --no-attach")
    assert [r["name"] for r in records] == ["solo-0"] and "billed until: gaudi-nb nodes down solo" in captured.stdout
    (instance,) = [i for res in ec2().describe_instances(InstanceIds=[records[0]["instance_id"]])["Reservations"] for i in res["Instances"]]
    assert instance.get("PublicIpAddress") and len(instance["NetworkInterfaces"]) == 1
    assert records[0]["resources"]["placement_group"] is None  # one machine: no cluster to place
    with capture_output() as captured:
        ip.run_line_magic("gaudi_cost", "")
    html = "".join(output.data.get("text/html", "") for output in captured.outputs)
    assert "provisioned machines" in html and "solo-0" in html and "$13.11/h" in html
    import gaudi_nb

    gaudi_nb.down("solo")
    with capture_output() as captured:
        ip.run_line_magic("gaudi_cost", "")
    assert "solo-0" not in "".join(output.data.get("text/html", "") for output in captured.outputs)


# -- what reaches EC2 for a cluster (moto does not implement placement groups or keep EFA's type) ----


def test_the_run_request_for_a_dl1_cluster_has_every_efa_interface_the_placement_group_spot_and_tags():
    from gaudi_nb.nodes.providers.aws import run_request
    from gaudi_nb.nodes.providers.base import ProvisionRequest, Resources

    request = ProvisionRequest(provider="aws", instance_type="dl1.24xlarge", count=2, region="us-west-2", name="big", ssh_from=SSH_FROM,
                               public_key="ssh-ed25519 AAAA test", owner="ada", spot=True)
    resources = Resources(key="gaudi_nb-ada-1", security_group="sg-1", placement_group="gaudi_nb-big", network={"image": "ami-1", "subnet": "subnet-1"})
    sent = run_request(request, resources)
    assert (sent["ImageId"], sent["InstanceType"], sent["MinCount"], sent["MaxCount"], sent["KeyName"]) == ("ami-1", "dl1.24xlarge", 2, 2, "gaudi_nb-ada-1")
    assert sent["Placement"] == {"GroupName": "gaudi_nb-big"}
    assert "apt-get install -y pdsh" in sent["UserData"]  # node 0 of a multi-node run needs it for DeepSpeed
    assert [(n["NetworkCardIndex"], n["DeviceIndex"], n["InterfaceType"], n["Groups"], n["SubnetId"]) for n in sent["NetworkInterfaces"]] == [
        (0, 0, "efa", ["sg-1"], "subnet-1"), (1, 1, "efa", ["sg-1"], "subnet-1"), (2, 1, "efa", ["sg-1"], "subnet-1"), (3, 1, "efa", ["sg-1"], "subnet-1")]
    assert not any("AssociatePublicIpAddress" in n for n in sent["NetworkInterfaces"])  # EC2 refuses it with several interfaces
    assert sent["InstanceMarketOptions"] == {"MarketType": "spot", "SpotOptions": {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}}
    tagged = {spec["ResourceType"]: {t["Key"]: t["Value"] for t in spec["Tags"]} for spec in sent["TagSpecifications"]}
    assert set(tagged) == {"instance", "volume", "network-interface"}
    assert tagged["instance"] == {"gaudi_nb": "true", "gaudi_nb:owner": "ada", "gaudi_nb:group": "big", "Name": "big"}
    assert sent["MetadataOptions"]["HttpTokens"] == "required"  # IMDSv2: the role's credentials are not one GET away

    assert "IamInstanceProfile" not in sent
    with_role = Resources(**{**resources.__dict__, "network": {**resources.network, "instance_profile": "gaudi-nb-autostop"}})
    assert run_request(request, with_role)["IamInstanceProfile"] == {"Name": "gaudi-nb-autostop"}

    one = run_request(ProvisionRequest(**{**request.__dict__, "count": 1, "spot": False}), Resources(**{**resources.__dict__, "placement_group": None}))
    assert one["NetworkInterfaces"] == [{"DeviceIndex": 0, "SubnetId": "subnet-1", "Groups": ["sg-1"], "AssociatePublicIpAddress": True, "DeleteOnTermination": True}]
    assert "Placement" not in one and "InstanceMarketOptions" not in one


def test_ec2_states_map_to_the_base_words_and_a_node_costs_its_lifetime_at_its_rate():
    from gaudi_nb.cost.billing import machine_spend as spend
    from gaudi_nb.nodes.providers.aws import STATES

    assert STATES == {"pending": "pending", "running": "running", "stopping": "stopping", "stopped": "stopped", "shutting-down": "stopping", "terminated": "terminated"}
    running = {"provider": "aws", "launched_at": 1000.0, "terminated_at": None, "price_per_hour": 13.11, "price_source": "catalog"}
    assert spend(running, now=1000.0 + 1800)["usd"] == pytest.approx(13.11 / 2)
    assert spend({**running, "price_per_hour": None}, now=4600.0)["usd"] is None  # unknown, never $0
    assert spend({"provider": None, "launched_at": None})["usd"] is None  # attached only: its runs meter it
    # billed while it runs: stopped from 1600 to 3400, running again since 3400
    restarted = {**running, "billed_intervals": [[1000.0, 1600.0]], "running_since": 3400.0}
    assert spend(restarted, now=4000.0)["hours"] == pytest.approx((600 + 600) / 3600)
    assert spend({**restarted, "running_since": None}, now=9999.0)["hours"] == pytest.approx(600 / 3600)  # stopped: the bill stands still


@pytest.mark.slow  # seven CLI processes and 3 s of billing on purpose; the list's own tests stay in the fast lane
def test_a_machine_stopped_behind_the_clients_back_stops_costing_and_nodes_start_brings_it_back(aws):
    import gaudi_nb

    (record,) = gaudi_nb.provision("aws", instance_type="dl1.24xlarge", name="napper", ssh_from=SSH_FROM, image=habana_image(), attach=False)
    client = ec2()
    client.stop_instances(InstanceIds=[record["instance_id"]])  # as autostop does on the machine

    def listed(*flags):
        result = cli("nodes", "list", "--json", *flags)
        assert result.returncode == 0, result.stderr
        return next(n for n in json.loads(result.stdout) if n["name"] == "napper-0")

    assert listed("--no-refresh")["state"] == "running"  # the store alone does not know yet
    stopped = listed()
    assert stopped["state"] == "stopped" and stopped["running_since"] is None and len(stopped["billed_intervals"]) == 1
    time.sleep(1.5)
    assert listed()["cost"]["usd"] == stopped["cost"]["usd"]  # a stopped machine costs nothing more

    started = cli("nodes", "start", "napper", "--no-attach", "--json")
    assert started.returncode == 0, started.stderr
    (running,) = json.loads(started.stdout)
    assert running["state"] == "running" and running["running_since"] >= stopped["billed_intervals"][0][1]
    live = {i["InstanceId"]: i["State"]["Name"] for r in client.describe_instances(InstanceIds=[record["instance_id"]])["Reservations"] for i in r["Instances"]}
    assert live == {record["instance_id"]: "running"}
    time.sleep(1.5)
    assert listed()["cost"]["usd"] > running["cost"]["usd"]  # billed again while it runs

    again = cli("nodes", "start", "napper-0", "--no-attach")
    assert again.returncode == 0 and "running at" in again.stdout  # running already: nothing to start, said plainly
    (ended,) = gaudi_nb.down("napper")
    first, = stopped["billed_intervals"]
    billed_hours = (first[1] - first[0] + ended["terminated_at"] - running["running_since"]) / 3600
    assert ended["cost_usd"] == pytest.approx(ended["price_per_hour"] * billed_hours, rel=1e-6)
    gone = cli("nodes", "start", "napper")
    assert gone.returncode == 2 and "terminated, nothing to start" in gone.stderr and len(gone.stderr.strip().splitlines()) == 1


# -- attach: the step after "running", against a real sshd standing in for the new machine ---------


def test_a_provisioned_node_is_attached_with_the_gaudi_nb_key_trusting_its_new_host_key(aws, gaudi_home, sshd, node_install, tmp_path, monkeypatch):
    from gaudi_nb.nodes import provision as flow
    from gaudi_nb.store import RunStore

    home = sshd.client_home(tmp_path / "client_home", trusted=False)  # a machine made a minute ago: its key is in no known_hosts
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    (home / ".ssh" / "id_ed25519").unlink()  # only the gaudi_nb key can log in
    private_key, public_key = flow.ensure_key()
    authorized = sshd.authorized_keys.read_text()
    sshd.authorized_keys.write_text(authorized + public_key + "\n")
    try:
        store = RunStore()
        record = store.add_node({"name": "fresh-0", "url": sshd.url, "user": sshd.user, "host": sshd.address, "port": sshd.port, "identity_file": str(private_key),
                                 "provider": "aws", "region": "us-west-2", "instance_id": "i-0123456789abcdef0", "instance_type": "dl1.24xlarge",
                                 "group": "fresh", "state": "running", "price_per_hour": 13.11, "launched_at": time.time()})
        said: List[str] = []
        attached = flow._attach(store, record, private_key, said.append)
    finally:
        sshd.authorized_keys.write_text(authorized)
    assert any("SSH answers; attaching" in line for line in said)
    assert attached["python"] and attached["home"] == str(sshd.node_home) and attached["gaudi_nb_version"]
    # what attach found joins what provisioning recorded
    assert (attached["instance_id"], attached["group"], attached["price_per_hour"], attached["state"]) == ("i-0123456789abcdef0", "fresh", 13.11, "running")
    assert f"[{sshd.address}]:{sshd.port}" in (home / ".ssh" / "known_hosts").read_text()


def test_a_machine_with_several_interfaces_gets_an_elastic_ip_that_terminating_releases(aws):
    import dataclasses

    from gaudi_nb.nodes.providers.aws import AwsProvider

    client = ec2()
    launched = client.run_instances(ImageId=habana_image(), InstanceType="dl1.24xlarge", MinCount=1, MaxCount=1,
                                    TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "gaudi_nb:node", "Value": "eip-0"}, {"Key": "gaudi_nb:group", "Value": "eip"}]}])
    instance_id = launched["Instances"][0]["InstanceId"]
    cloud = AwsProvider("us-west-2")
    (machine,) = cloud.query_instances(ids=[instance_id])
    # as EC2 reports a running machine with four EFA interfaces: no public address of its own (moto gives one anyway)
    bare = dataclasses.replace(machine, state="running", public_ip=None, extra={**machine.extra, "interfaces": 4})
    (given,) = cloud._give_public_addresses([bare])
    (address,) = [a for a in client.describe_addresses()["Addresses"] if {"Key": "gaudi_nb:instance", "Value": instance_id} in a.get("Tags", [])]
    assert given.public_ip == address["PublicIp"] and address["NetworkInterfaceId"] == machine.extra["primary_interface"]
    cloud.terminate_instances([instance_id])
    assert not [a for a in client.describe_addresses()["Addresses"] if a["AllocationId"] == address["AllocationId"]]  # an idle Elastic IP is billed


def test_down_after_autostop_terminated_the_machine_closes_the_record_releases_its_address_and_cleans_up(aws):
    import dataclasses

    import gaudi_nb
    from gaudi_nb.nodes.providers.aws import AwsProvider

    (record,) = gaudi_nb.provision("aws", instance_type="dl1.24xlarge", name="gone", ssh_from=SSH_FROM, image=habana_image(), attach=False)
    client = ec2()
    cloud = AwsProvider("us-west-2")
    (machine,) = cloud.query_instances(ids=[record["instance_id"]])
    cloud._give_public_addresses([dataclasses.replace(machine, public_ip=None, extra={**machine.extra, "interfaces": 4})])  # an Elastic IP, as a cluster's machine has
    client.terminate_instances(InstanceIds=[record["instance_id"]])  # as the watchdog on the machine does, behind the client's back
    (address,) = [a for a in client.describe_addresses()["Addresses"] if {"Key": "gaudi_nb:instance", "Value": record["instance_id"]} in a.get("Tags", [])]
    said: List[str] = []
    (ended,) = gaudi_nb.down("gone", progress=said.append)
    assert ended["state"] == "terminated" and ended["cost_usd"] is not None and not any(line.startswith("terminating") for line in said)
    assert f"released {address['AllocationId']}" in said  # an idle Elastic IP bills on its own
    assert not [a for a in client.describe_addresses()["Addresses"] if a["AllocationId"] == address["AllocationId"]]
    assert not [g for g in client.describe_security_groups()["SecurityGroups"] if g["GroupId"] == record["resources"]["security_group"]]


def _failing(monkeypatch, operation: str, code: str) -> None:
    """EC2 answers `operation` with `code` (what moto cannot be made to do: CreateTags before the new id is known, throttling)."""
    from gaudi_nb.nodes.providers import aws as aws_module

    real = aws_module.AwsProvider._call

    def call(self, name, **arguments):
        if name == operation:
            raised = aws_module.AwsError(f"AWS {name} in {self.region}: {code}: refused")
            raised.code = code
            raise raised
        return real(self, name, **arguments)

    monkeypatch.setattr(aws_module.AwsProvider, "_call", call)


def test_a_provision_that_fails_after_run_instances_leaves_nothing_running_or_unrecorded(aws, monkeypatch):
    import gaudi_nb
    from gaudi_nb.store import RunStore

    image = habana_image()
    before = cloud_state()
    with monkeypatch.context() as patch:
        _failing(patch, "create_tags", "RequestLimitExceeded")
        with pytest.raises(GaudiNbError, match="create_tags in us-west-2: RequestLimitExceeded"):
            gaudi_nb.provision("aws", instance_type="dl1.24xlarge", count=2, name="untagged", ssh_from=SSH_FROM, image=image, attach=False)
    assert cloud_state() == before and RunStore().list_nodes() == []
    # the store refuses the record: the machine it could not write down goes again
    with monkeypatch.context() as patch:
        patch.setattr(RunStore, "add_node", lambda self, record: (_ for _ in ()).throw(GaudiNbError("the store is read-only")))
        with pytest.raises(GaudiNbError, match=r"the store is read-only; the machines just made \(i-\w+\) were terminated"):
            gaudi_nb.provision("aws", instance_type="dl1.24xlarge", name="unrecorded", ssh_from=SSH_FROM, image=image, attach=False)
    assert cloud_state() == before


def test_an_autostop_that_cannot_act_is_one_line_not_watching(monkeypatch):
    from gaudi_nb.nodes import autostop as node_autostop
    from gaudi_nb.nodes.provision import _start_autostop

    answer = {"pid": 7, "survives_reboot": True, "may_act": False, "cannot_act": "AWS stop_instances in us-west-2: UnauthorizedOperation: not allowed"}
    monkeypatch.setattr(node_autostop, "start_on_node", lambda record, config: answer)  # what the machine answered
    said: List[str] = []
    record = {"name": "g-0", "group": "g", "provider": "aws", "region": "us-west-2", "instance_id": "i-1", "launched_at": 0.0, "idle_minutes": 30, "price_per_hour": 13.11}
    _start_autostop(record, said.append, "stop")
    assert said == ["g-0: autostop cannot stop this machine (AWS stop_instances in us-west-2: UnauthorizedOperation: not allowed); it tries again at every "
                    "check: give the machine a role that may (see Autostop's Permissions in docs/nodes.md), or gaudi-nb nodes down g yourself"]
    answer.update(may_act=True, cannot_act=None)
    said.clear()
    _start_autostop(record, said.append, "stop")
    assert said == ["g-0: autostop (stop) watching, idle minutes 30"]


def test_a_role_that_may_only_terminate_still_terminates(aws, monkeypatch):
    from gaudi_nb.nodes.providers.aws import AwsProvider

    launched = ec2().run_instances(ImageId=habana_image(), InstanceType="dl1.24xlarge", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    _failing(monkeypatch, "describe_addresses", "UnauthorizedOperation")  # autostop's role: ec2:TerminateInstances on itself only
    AwsProvider("us-west-2").terminate_instances([launched])
    assert ec2().describe_instances(InstanceIds=[launched])["Reservations"][0]["Instances"][0]["State"]["Name"] in ("shutting-down", "terminated")


def test_nodes_list_where_the_cloud_cannot_be_asked_shows_the_machines_as_last_recorded(gaudi_home, monkeypatch):
    from gaudi_nb.store import RunStore

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(gaudi_home.parent / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(gaudi_home.parent / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    now = time.time()
    RunStore().add_node({"name": "far-0", "url": "ssh://ubuntu@198.51.100.7:22", "user": "ubuntu", "host": "198.51.100.7", "port": 22, "provider": "aws",
                         "region": "us-west-2", "instance_id": "i-0far", "group": "far", "state": "running", "price_per_hour": 13.11,
                         "launched_at": now - 3600, "running_since": now - 3600, "billed_intervals": []})
    result = cli("nodes", "list")  # a teammate on a shared store, without the account's credentials
    assert result.returncode == 0 and "far-0" in result.stdout and "running" in result.stdout
    said = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(said) == 1 and said[0].startswith("aws us-west-2: states as last recorded (no AWS credentials found")
