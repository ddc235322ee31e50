"""IBM Cloud VPC provider against a local VPC API server (tests/ibm_vpc_server.py): what it creates, finds and removes."""
from __future__ import annotations

import base64
import json
import os
import struct
import urllib.error
import urllib.request

import pytest
from ibm_vpc_server import GAUDI3, IbmVpcServer

from gaudi_nb.errors import GaudiNbError, NotFoundError, SpecError
from gaudi_nb.nodes.providers import provider
from gaudi_nb.nodes.providers.base import ProvisionRequest

SSH_FROM = "203.0.113.0/24"
SDK_SETTINGS = ("VPC_URL", "VPC_AUTH_TYPE", "VPC_AUTHTYPE", "VPC_APIKEY", "IBMCLOUD_API_KEY", "IC_API_KEY", "IBM_CREDENTIALS_FILE", "VCAP_SERVICES")


def public_key(seed: int) -> str:
    """An Ed25519 public key line (the wire format: name then 32 key bytes, each length-prefixed)."""
    name = b"ssh-ed25519"
    blob = struct.pack(">I", len(name)) + name + struct.pack(">I", 32) + bytes([seed]) * 32
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} test@gaudi-nb"


@pytest.fixture(scope="module")
def server():
    # Two items a page, so every list the provider reads is paginated as a big account's would be.
    vpc = IbmVpcServer(region="us-east", start_delay=0.3, delete_delay=0.3, page_size=2).start()
    yield vpc
    vpc.stop()


@pytest.fixture
def ibm(server, monkeypatch, tmp_path):
    for name in SDK_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ibm-credentials.env from the real home
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VPC_URL", server.url)
    monkeypatch.setenv("VPC_AUTH_TYPE", "noauth")
    return provider("ibm", "us-east")


def request(name: str, seed: int, **overrides) -> ProvisionRequest:
    fields = dict(provider="ibm", instance_type=GAUDI3, count=1, region="us-east", name=name,
                  ssh_from=SSH_FROM, public_key=public_key(seed), owner="tester")
    fields.update(overrides)
    return ProvisionRequest(**fields)


def posts(server, path, since):
    return [r["body"] for r in server.requests[since:] if r["method"] == "POST" and r["path"] == path]


def test_provision_one_gaudi3_see_it_then_take_it_down(server, ibm):
    since = len(server.requests)
    wanted = request("g", seed=1)
    resources = ibm.bootstrap_instances(wanted)
    instances = ibm.run_instances(wanted, resources)
    running = ibm.wait_instances([i.id for i in instances], "running", timeout_s=10)
    assert [(i.node, i.state, i.instance_type) for i in running] == [("g-0", "running", GAUDI3)]
    assert running[0].public_ip and running[0].private_ip.startswith("10.240.64.")

    listed = ibm.query_instances(group="g")
    assert [(i.id, i.node, i.public_ip) for i in listed] == [(running[0].id, "g-0", running[0].public_ip)]
    assert ibm.query_instances(group="other") == []

    # What the cloud was asked for, every call at the API version the provider is written against.
    from gaudi_nb.nodes.providers.ibm import API_VERSION

    assert {(r["query"].get("version"), r["query"].get("generation")) for r in server.requests[since:]} == {(API_VERSION, "2")}
    (instance_body,) = posts(server, "/instances", since)
    assert instance_body["name"] == "gaudi-nb-g-0"
    assert instance_body["profile"] == {"name": GAUDI3}
    assert instance_body["keys"] == [{"id": resources.key}]
    assert instance_body["primary_network_interface"]["security_groups"] == [{"id": resources.security_group}]
    # The first subnet is in us-east-1, which does not offer the Gaudi 3 profile here.
    assert instance_body["zone"] == {"name": "us-east-2"}
    assert "default_trusted_profile" not in instance_body and "metadata_service" not in instance_body
    image = next(i for i in server.images.values() if i["id"] == instance_body["image"]["id"])
    assert image["name"] == "gaudi3-os-u22-01-21-0"  # the newest Gaudi image, not a plain Ubuntu one
    (key_body,) = posts(server, "/keys", since)
    assert key_body["public_key"] == " ".join(wanted.public_key.split()[:2]) and key_body["type"] == "ed25519"
    (group_body,) = posts(server, "/security_groups", since)
    inbound = [r for r in group_body["rules"] if r["direction"] == "inbound"]
    assert inbound == [{"direction": "inbound", "protocol": "tcp", "port_min": 22, "port_max": 22,
                        "ip_version": "ipv4", "remote": {"cidr_block": SSH_FROM}}]
    (self_rule,) = posts(server, f"/security_groups/{resources.security_group}/rules", since)
    assert self_rule["remote"] == {"id": resources.security_group} and self_rule["protocol"] == "any"
    rules = server.security_groups[resources.security_group]["rules"]
    assert not any(r["direction"] == "inbound" and r.get("remote", {}).get("cidr_block") == "0.0.0.0/0" for r in rules)
    (floating_body,) = posts(server, "/floating_ips", since)
    assert floating_body["target"] == {"id": running[0].extra["network_interface"]}

    # Down: the instance and its floating IP (billed on its own) go; then what bootstrap made.
    floating_id = running[0].extra["floating_ip"]
    ibm.terminate_instances([running[0].id])
    deletes = {r["path"] for r in server.requests[since:] if r["method"] == "DELETE"}
    assert {f"/instances/{running[0].id}", f"/floating_ips/{floating_id}"} <= deletes
    assert ibm.wait_instances([running[0].id], "terminated", timeout_s=10) == []
    assert running[0].id not in server.instances and floating_id not in server.floating_ips
    removed = ibm.cleanup(resources)
    assert sorted(removed) == sorted(resources.created) == sorted([("key", resources.key), ("security_group", resources.security_group)])
    assert resources.key not in server.keys and resources.security_group not in server.security_groups


def test_cleanup_keeps_what_a_machine_still_uses_and_a_key_it_did_not_make(server, ibm):
    existing = ibm.vpc.create_key(" ".join(public_key(2).split()[:2]), name="my-laptop", type="ed25519").get_result()
    wanted = request("keep", seed=2, count=2)
    resources = ibm.bootstrap_instances(wanted)
    assert resources.key == existing["id"] and ("key", existing["id"]) not in resources.created  # reused, same key
    instances = ibm.run_instances(wanted, resources)
    assert sorted(i.node for i in instances) == ["keep-0", "keep-1"]
    assert ibm.cleanup(resources) == []  # the machines still use the security group
    assert resources.security_group in server.security_groups

    ibm.stop_instances([instances[0].id])
    stopped = ibm.wait_instances([instances[0].id], "stopped", timeout_s=10)
    assert stopped[0].state == "stopped"

    ids = [i.id for i in instances]
    ibm.terminate_instances(ids)
    ibm.wait_instances(ids, "terminated", timeout_s=10)
    assert ibm.query_instances(group="keep") == []
    assert ibm.cleanup(resources) == [("security_group", resources.security_group)]
    assert existing["id"] in server.keys  # the user's own key stays


def test_missing_credentials_is_one_line_and_nothing_is_created(server, ibm, monkeypatch):
    monkeypatch.delenv("VPC_AUTH_TYPE")
    since = len(server.requests)
    fresh = provider("ibm", "us-east")
    with pytest.raises(GaudiNbError) as caught:
        fresh.bootstrap_instances(request("nocreds", seed=3))
    message = str(caught.value)
    assert "\n" not in message and "IBMCLOUD_API_KEY" in message and "VPC_APIKEY" in message
    assert server.requests[since:] == []
    assert "IBMCLOUD_API_KEY" in fresh.capabilities.credentials_help


def test_unknown_type_a_region_without_it_spot_and_bad_names_are_one_line(server, ibm, monkeypatch):
    since = len(server.requests)
    with pytest.raises(SpecError, match=GAUDI3):
        ibm.bootstrap_instances(request("x", seed=4, instance_type="gx9-huge"))
    with pytest.raises(SpecError, match="spot"):
        ibm.bootstrap_instances(request("x", seed=4, spot=True))
    with pytest.raises(SpecError, match="lowercase"):
        ibm.bootstrap_instances(request("My_Group", seed=4))
    monkeypatch.delitem(server.profiles, GAUDI3)
    with pytest.raises(SpecError, match="does not offer") as caught:
        ibm.bootstrap_instances(request("x", seed=4))
    assert "\n" not in str(caught.value)
    assert posts(server, "/keys", since) == posts(server, "/instances", since) == []


def test_capabilities_and_no_invented_price(ibm):
    from gaudi_nb.cost.catalog import lookup

    caps = ibm.capabilities
    assert (caps.spot, caps.placement_groups, caps.stop) == (True, False, True)
    assert lookup(GAUDI3, "us-east").on_demand_per_hour is None
    assert not any("price" in name for name in vars(type(ibm)))


def test_server_answers_like_the_api_for_bad_requests(server, ibm):
    from ibm_cloud_sdk_core import ApiException

    with pytest.raises(ApiException) as caught:
        ibm.vpc.create_instance({"name": "no-zone", "profile": {"name": GAUDI3}, "image": {"id": "r014-x"}})
    assert caught.value.status_code == 400 and "zone" in caught.value.message
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{server.url}/instances?generation=2")
    assert missing.value.code == 400 and json.load(missing.value)["errors"][0]["code"] == "missing_version"
    assert os.environ["VPC_AUTH_TYPE"] == "noauth"


def test_a_trusted_profile_gives_the_machine_its_own_identity(server, ibm, monkeypatch):
    monkeypatch.setenv("GAUDI_NB_IBM_TRUSTED_PROFILE", "Profile-1234")
    since = len(server.requests)
    wanted = request("trusted", seed=10)
    resources = ibm.bootstrap_instances(wanted)
    instances = ibm.run_instances(wanted, resources)
    (body,) = posts(server, "/instances", since)
    assert body["default_trusted_profile"] == {"target": {"id": "Profile-1234"}, "auto_link": True}
    assert body["metadata_service"] == {"enabled": True}
    ibm.terminate_instances([i.id for i in instances])
    ibm.wait_instances([i.id for i in instances], "terminated", timeout_s=10)
    assert sorted(ibm.cleanup(resources)) == sorted(resources.created)


def test_a_failure_midway_leaves_nothing_running_or_billed(server, ibm):
    wanted = request("half", seed=5)
    resources = ibm.bootstrap_instances(wanted)
    server.fail_next("POST", "/floating_ips")
    with pytest.raises(GaudiNbError, match="create_floating_ip failed \\(500\\)"):
        ibm.run_instances(wanted, resources)
    assert not [i for i in server.instances.values() if i["name"].startswith("gaudi-nb-half-")]
    assert sorted(ibm.cleanup(resources)) == sorted(resources.created)


def test_a_machine_deleted_elsewhere_leaves_a_floating_ip_that_release_addresses_deletes(server, ibm):
    wanted = request("elsewhere", seed=9)
    resources = ibm.bootstrap_instances(wanted)
    (instance,) = ibm.wait_instances([i.id for i in ibm.run_instances(wanted, resources)], "running", timeout_s=10)
    floating_id = instance.extra["floating_ip"]
    assert ibm.may_act(instance.id, "stop") is None  # autostop's proof on the machine: a token that reads itself
    ibm.vpc.delete_instance(instance.id)  # the console, or autostop on the machine: its floating IP stays, unbound and billed
    assert ibm.wait_instances([instance.id], "terminated", timeout_s=10) == []
    assert floating_id in server.floating_ips and not server.floating_ips[floating_id].get("target")
    assert ibm.release_addresses([instance.id], [instance.node]) == [floating_id]
    assert "get_instance failed (404)" in ibm.may_act(instance.id, "stop")
    assert floating_id not in server.floating_ips
    ibm.cleanup(resources)


def test_a_group_name_in_use_is_refused(server, ibm):
    wanted = request("taken", seed=6)
    resources = ibm.bootstrap_instances(wanted)
    first = ibm.run_instances(wanted, resources)
    with pytest.raises(SpecError, match="already has machines of a group 'taken' \\(taken-0\\)"):
        ibm.run_instances(wanted, resources)
    ibm.terminate_instances([i.id for i in first])
    ibm.wait_instances([i.id for i in first], "terminated", timeout_s=10)
    ibm.cleanup(resources)


def test_network_choice_with_several_vpcs_and_a_chosen_subnet(ibm, monkeypatch):
    other = IbmVpcServer(region="us-east", start_delay=0.1, delete_delay=0.1).start()
    try:
        second = other.add_vpc("team-vpc", {"us-east-3": "10.250.0.0/24"})
        monkeypatch.setenv("VPC_URL", other.url)
        cloud = provider("ibm", "us-east")
        resources = cloud.bootstrap_instances(request("net", seed=7))
        assert resources.network["zone"] == "us-east-2" and resources.network["vpc"] != second["id"]  # the oldest VPC
        assert "GAUDI_NB_IBM_SUBNET" in resources.network["warnings"][0]
        chosen = next(s for s in other.subnets.values() if s["vpc"]["id"] == second["id"])
        monkeypatch.setenv("GAUDI_NB_IBM_SUBNET", chosen["name"])
        picked = provider("ibm", "us-east").bootstrap_instances(request("net2", seed=7))
        assert (picked.network["vpc"], picked.network["zone"]) == (second["id"], "us-east-3")
        monkeypatch.setenv("GAUDI_NB_IBM_SUBNET", "nowhere")
        with pytest.raises(SpecError, match="GAUDI_NB_IBM_SUBNET=nowhere"):
            provider("ibm", "us-east").bootstrap_instances(request("net3", seed=7))
        # No VPC at all: one line saying what to create, and no key or group made first.
        monkeypatch.delenv("GAUDI_NB_IBM_SUBNET")
        other.vpcs.clear()
        other.subnets.clear()
        since = len(other.requests)
        with pytest.raises(NotFoundError, match="no VPC in IBM Cloud us-east: create one with a subnet, `ibmcloud is vpc-create") as caught:
            provider("ibm", "us-east").bootstrap_instances(request("net4", seed=9))
        assert "\n" not in str(caught.value)
        assert [r for r in other.requests[since:] if r["method"] != "GET"] == []
    finally:
        other.stop()


def test_a_real_user_reaches_the_region_endpoint_with_an_api_key(monkeypatch, tmp_path):
    for name in SDK_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IBMCLOUD_API_KEY", "not-a-real-key")
    client = provider("ibm", "eu-de").vpc  # made without a network call (IAM is asked on the first request)
    assert client.service_url == "https://eu-de.iaas.cloud.ibm.com/v1"
    assert client.authenticator.authentication_type() == "iam"
    with pytest.raises(SpecError, match="unknown IBM Cloud region 'mars-1'"):
        provider("ibm", "mars-1").query_instances(group="g")
    with pytest.raises(SpecError, match="IPv4"):
        provider("ibm", "eu-de").bootstrap_instances(request("v6", seed=8, ssh_from="2001:db8::/32"))


@pytest.mark.slow  # the whole flow through CLI processes; the API-level tests here stay in the fast lane
def test_cli_provision_list_and_down_one_gaudi3(server, tmp_path):
    """The issue's acceptance: `gaudi-nb nodes provision ibm ... --no-attach`, listed, `down` deletes the instance and its floating IP."""
    import subprocess

    from conftest import BIN

    env = {k: v for k, v in os.environ.items() if k not in SDK_SETTINGS and not k.startswith("GAUDI_NB_")}
    env.update(VPC_URL=server.url, VPC_AUTH_TYPE="noauth", GAUDI_NB_HOME=str(tmp_path / "home"), HOME=str(tmp_path), COLUMNS="200")

    def cli(*args):
        return subprocess.run([str(BIN / "gaudi-nb"), "nodes", *args], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)

    before = set(server.instances)
    made = cli("provision", "ibm", "--instance-type", GAUDI3, "--no-attach", "--ssh-from", SSH_FROM, "--name", "g", "--json")
    assert made.returncode == 0, made.stderr
    (record,) = json.loads(made.stdout)
    instance_id = record["instance_id"]
    assert set(server.instances) - before == {instance_id} and server.instances[instance_id]["status"] == "running"
    floating = next(f for f in server.floating_ips.values() if f["target"]["id"] == server.instances[instance_id]["primary_network_interface"]["id"])
    assert (record["name"], record["group"], record["host"]) == ("g-0", "g", floating["address"])
    assert record["user"] == "root" and record["region"] == "us-east"
    rules = next(g for g in server.security_groups.values() if g["name"] == "gaudi-nb-g")["rules"]
    assert [r["remote"] for r in rules if r["direction"] == "inbound" and r["protocol"] == "tcp"] == [{"cidr_block": SSH_FROM}]
    # No price is published for the profile: unknown, and the output says where to set one.
    assert record["price_per_hour"] is None and "prices.csv" in record["price_source"]

    listed = cli("list", "--json")
    assert listed.returncode == 0, listed.stderr
    (row,) = [r for r in json.loads(listed.stdout) if r["name"] == "g-0"]
    assert row["instance_id"] == instance_id and row["cost"]["usd"] is None
    shown = " ".join(cli("list").stdout.split())
    assert "unknown" in shown and "prices.csv" in shown

    down = cli("down", "g", "--json")
    assert down.returncode == 0, down.stderr
    (gone,) = json.loads(down.stdout)
    assert gone["state"] == "terminated"
    assert instance_id not in server.instances and floating["id"] not in server.floating_ips
    assert not any(g["name"] == "gaudi-nb-g" for g in server.security_groups.values())
    assert not any(k["name"].startswith("gaudi-nb-key-") for k in server.keys.values())

    # The refusals: one line each, exit 2, nothing created.
    since = len(server.requests)
    unknown = cli("provision", "ibm", "--instance-type", "gx9-huge", "--no-attach", "--ssh-from", SSH_FROM, "--name", "u")
    assert unknown.returncode == 2 and GAUDI3 in unknown.stderr and len(unknown.stderr.strip().splitlines()) == 1
    saved = server.profiles.pop(GAUDI3)
    try:
        absent = cli("provision", "ibm", "--instance-type", GAUDI3, "--no-attach", "--ssh-from", SSH_FROM, "--name", "r")
    finally:
        server.profiles[GAUDI3] = saved
    assert absent.returncode == 2 and "does not offer" in absent.stderr and len(absent.stderr.strip().splitlines()) == 1
    del env["VPC_AUTH_TYPE"]
    nocreds = cli("provision", "ibm", "--instance-type", GAUDI3, "--no-attach", "--ssh-from", SSH_FROM, "--name", "c")
    assert nocreds.returncode == 2 and "IBMCLOUD_API_KEY" in nocreds.stderr and len(nocreds.stderr.strip().splitlines()) == 1
    assert [r for r in server.requests[since:] if r["method"] != "GET"] == []


def test_an_api_key_is_traded_for_a_token_and_a_wrong_one_is_one_line(monkeypatch, tmp_path):
    secured = IbmVpcServer(region="us-east", start_delay=0.1, delete_delay=0.1, api_keys=["good-key"]).start()
    try:
        for name in SDK_SETTINGS:
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HOME", str(tmp_path))
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("VPC_URL", secured.url)
        monkeypatch.setenv("VPC_AUTH_URL", secured.url.removesuffix("/v1"))  # this server is IAM too
        monkeypatch.setenv("IBMCLOUD_API_KEY", "good-key")
        assert provider("ibm", "us-east").query_instances(group="g") == []
        assert [r["path"] for r in secured.requests[:2]] == ["/identity/token", "/instances"]

        monkeypatch.setenv("IBMCLOUD_API_KEY", "wrong-key")
        with pytest.raises(SpecError) as caught:
            provider("ibm", "us-east").query_instances(group="g")
        message = str(caught.value)
        assert "\n" not in message and "API key could not be found" in message and "IBMCLOUD_API_KEY" in message
        monkeypatch.setenv("VPC_AUTH_TYPE", "noauth")  # the server wants a token: the VPC call itself is refused
        with pytest.raises(SpecError, match="did not accept the credentials \\(401"):
            provider("ibm", "us-east").query_instances(group="g")
    finally:
        secured.stop()


def test_a_machine_the_cloud_fails_is_one_line_with_ibms_reason(server, ibm):
    wanted = request("broken", seed=11)
    resources = ibm.bootstrap_instances(wanted)
    (made,) = ibm.run_instances(wanted, resources)
    server.instances[made.id].update(
        status="failed", _target="failed",
        status_reasons=[{"code": "cannot_start_capacity", "message": "Insufficient capacity for the profile in the zone"}])
    with pytest.raises(GaudiNbError, match="could not start broken-0: Insufficient capacity") as caught:
        ibm.wait_instances([made.id], "running", timeout_s=10)
    assert "\n" not in str(caught.value)
    assert ibm.query_instances(group="broken")[0].state == "failed"
    ibm.terminate_instances([made.id])
    ibm.wait_instances([made.id], "terminated", timeout_s=10)
    ibm.cleanup(resources)
