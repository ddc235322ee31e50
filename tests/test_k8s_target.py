"""A Kubernetes cluster as a target, through the real `kubernetes` client against the API-server stand-in
(tests/k8s_standin: real HTTP on 127.0.0.1, its pods' commands run as local processes on a shared folder).

One stand-in and one home for the module; the runs start together (the stand-in's pods share two cores)
and each test asserts on its own: a two-node run that trains to its end with events from both pods and a
log stream dropped on the way, a stop on the agent's checkpoint road, a job the scheduler cannot place
(pending with its reason, not billed), and an evicted pod that ends its run `lost`. Those are `slow` (about
40 s together on two loaded cores); the pure reading of pods and the panel's word stay in the fast lane."""
import base64
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import first_broken_event, wait_for
from k8s_standin import Cluster
from scriptrun import LOOP

import gaudi_nb
from gaudi_nb.targets.k8s_submit import job_name

PRICE = 36.0


@pytest.fixture(scope="module")
def k8s(tmp_path_factory):
    root = tmp_path_factory.mktemp("k8s")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GAUDI_NB_HOME", str(root / "home"))
        patch.delenv("GAUDI_NB_STORE_URL", raising=False)
        patch.setenv("GAUDI_NB_ACCELERATOR", "cpu")
        patch.setenv("GAUDI_NB_MASTER_ADDR", "127.0.0.1")  # the stand-in has no cluster DNS for <job>-0.<job>
        patch.setenv("K8S_TEST_TOKEN", "s3cret-value")
        patch.setenv("COLUMNS", "200")
        env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "PYTHONPATH": os.environ.get("PYTHONPATH", ""), "GAUDI_NB_ACCELERATOR": "cpu"}
        cluster = Cluster(root / "cluster", nodes={"gaudi-a": 4, "gaudi-b": 4}, base_env=env)
        try:
            yield cluster, root
        finally:
            cluster.close()


def cli(capsys, *argv):
    """gaudi-nb in this process (one import of the kubernetes client for the module, not one per command)."""
    from gaudi_nb.cli import main

    capsys.readouterr()
    try:
        main(list(argv))
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    captured = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=captured.out, stderr=captured.err)


@pytest.fixture(scope="module")
def runs(k8s):
    """Attach the cluster from the CLI, then start every run of the module at once."""
    cluster, root = k8s
    attached = gaudi_nb.attach("k8s://standin/default", name="kc", kubeconfig=str(cluster.kubeconfig), price_per_hour=PRICE, storage_class="shared", image="gaudi-nb:test")
    loop = root / "loop.py"
    loop.write_text(LOOP.format(step_s=0.05).replace("    report(step=step", "    print(f'rank trained step {step}', flush=True)\n    report(step=step"))
    slow = root / "slow.py"
    slow.write_text(LOOP.format(step_s=0.2))
    started = {
        "two": gaudi_nb.train(target="kc", nodes=2, devices=1, max_steps=5, script=str(loop), env="K8S_TEST_TOKEN"),
        "pending": gaudi_nb.train(target="kc", nodes=1, devices=8, max_steps=5, script=str(loop)),
        "stop": gaudi_nb.train(target="kc", nodes=1, devices=1, max_steps=5000, script=str(slow)),
        "evict": gaudi_nb.train(target="kc", nodes=1, devices=1, max_steps=5000, script=str(slow)),
        "deleted": gaudi_nb.train(target="kc", nodes=1, devices=1, max_steps=5000, script=str(slow)),
    }
    return {"attached": attached, **started}


@pytest.mark.slow
def test_attach_checks_the_cluster_and_lists_its_gaudi_nodes(k8s, runs, capsys):
    cluster, _ = k8s
    record = runs["attached"]
    facts = record["resources"]["kubernetes"]
    assert record["url"] == "k8s://standin/default" and record["device_count"] == 8 and record["price_per_hour"] == PRICE
    assert facts["job_kinds"] == ["job"] and facts["kind"] == "job"  # discovery: no operator installed
    assert {n["name"]: n["cards"] for n in facts["gaudi_nodes"]} == {"gaudi-a": 4, "gaudi-b": 4}
    reviewed = [body["spec"]["resourceAttributes"] for kind, body in cluster.received if kind == "selfsubjectaccessreviews"]
    assert {"verb": "create", "group": "batch", "resource": "jobs", "namespace": "default", "subresource": ""} in reviewed
    again = cli(capsys, "nodes", "attach", "k8s://standin/default", "--name", "kc", "--kubeconfig", str(cluster.kubeconfig), "--price-per-hour", str(PRICE), "--storage-class", "shared", "--image", "gaudi-nb:test", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["resources"]["kubernetes"]["gaudi_nodes"][0]["name"] == "gaudi-a"  # the CLI's door, refreshed
    listed = cli(capsys, "nodes", "list", "--no-refresh")
    assert "k8s://standin/default" in listed.stdout and "8× hpu on 2 nodes, 8 free" in listed.stdout
    checked = cli(capsys, "nodes", "check", "kc")
    assert checked.returncode == 0, checked.stdout
    assert "gaudi-a" in checked.stdout and "4 cards" in checked.stdout
    missing = cli(capsys, "nodes", "attach", "k8s://standin/nope", "--name", "kn", "--kubeconfig", str(cluster.kubeconfig))
    assert missing.returncode == 2 and "namespace 'nope' does not exist" in missing.stderr and len(missing.stderr.strip().splitlines()) == 1
    cluster.denied.add(("create", "jobs"))
    try:
        denied = cli(capsys, "nodes", "attach", "k8s://standin/team", "--name", "kt", "--kubeconfig", str(cluster.kubeconfig))
    finally:
        cluster.denied.clear()
    assert denied.returncode == 2 and "may not create jobs in namespace team" in denied.stderr
    wrong = cli(capsys, "nodes", "attach", "k8s://standin", "--name", "kt", "--identity-file", "/k")
    assert wrong.returncode == 2 and "not for a Kubernetes cluster" in wrong.stderr
    assert "kn" not in cli(capsys, "nodes", "list", "--no-refresh").stdout  # nothing recorded when a check fails
    from gaudi_nb.jupyter_server_ext.payloads import nodes as sidebar_nodes  # what the JupyterLab sidebar lists

    (row,) = [n for n in sidebar_nodes([], [record], {}) if n["name"] == "kc"]
    assert row["url"] == "k8s://standin/default" and row["device_count"] == 8 and [n["name"] for n in row["cluster"]["gaudi_nodes"]] == ["gaudi-a", "gaudi-b"]


@pytest.mark.slow
def test_a_two_node_run_trains_to_its_end_with_events_from_both_pods(k8s, runs, capsys):
    cluster, root = k8s
    run = runs["two"]
    wait_for(lambda: run.record()["steps_completed"] >= 1 or run.done, timeout=120, what="the first step")
    cluster.drop_logs.set()  # every log stream breaks off: the mirrors go on from their offsets
    time.sleep(1.0)
    cluster.drop_logs.clear()
    run.wait(timeout=120)
    record = run.record()
    assert record["status"] == "succeeded", record["exit"]
    events = run.events()
    job = job_name(run.run_id)
    assert [e["step"] for e in events if e["type"] == "step"] == [1, 2, 3, 4, 5]  # each once, though the streams dropped
    assert sorted((e["node"], e["rank"], e["world_size"]) for e in events if e["type"] == "worker_start") == [(f"{job}-0", 0, 2), (f"{job}-1", 1, 2)]
    assert {e["node"] for e in events if e["type"] == "cost"} == {f"{job}-0", f"{job}-1"}
    ends = [e for e in events if e["type"] == "run_end"]
    assert len(ends) == 1 and events[-1]["type"] == "run_end"
    assert {name: node["status"] for name, node in ends[0]["nodes"].items()} == {f"{job}-0": "succeeded", f"{job}-1": "succeeded"}
    # spend: each pod metered its own running time at the node price; the record sums them
    latest = {e["node"]: e for e in events if e["type"] == "cost"}
    assert all(e["price_per_hour"] == PRICE for e in latest.values()) and record["cost"]["usd"] == pytest.approx(sum(e["usd"] for e in latest.values()))
    # what was submitted: --env's value in a Secret only, the cards requested, one shared claim, no HABANA_VISIBLE_DEVICES
    submitted = {body["kind"]: body for kind, body in cluster.received if body.get("metadata", {}).get("name", "").startswith(job)}
    assert {k: base64.b64decode(v).decode() for k, v in submitted["Secret"]["data"].items()} == {"K8S_TEST_TOKEN": "s3cret-value"}
    manifest = json.dumps(submitted["Job"])
    assert "s3cret-value" not in manifest and "HABANA_VISIBLE_DEVICES" not in manifest
    agent = submitted["Job"]["spec"]["template"]["spec"]["containers"][0]
    assert agent["resources"]["limits"]["habana.ai/gaudi"] == "1" and "SYS_NICE" in agent["securityContext"]["capabilities"]["add"]
    assert submitted["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]
    # the run's end deleted its job (and the pods with it); the logs came here first
    wait_for(lambda: not cluster.objects.list("jobs", "default", f"job-name={job}")[0] and not cluster.pods(labels=f"job-name={job}"), timeout=30, what="the job deleted")
    assert not cluster.objects.get("jobs", "default", job)
    log = cli(capsys, "logs", run.run_id)
    assert log.returncode == 0 and "rank trained step 5" in log.stdout


@pytest.mark.slow
def test_a_stop_takes_the_checkpoint_road_and_deletes_the_job(k8s, runs, capsys):
    cluster, _ = k8s
    run = runs["stop"]
    wait_for(lambda: run.record()["steps_completed"] >= 2 or run.done, timeout=120, what="two steps")
    stopped = cli(capsys, "stop", run.run_id)
    assert stopped.returncode == 0, stopped.stderr
    assert any(command[:4] == ["python3", "-m", "gaudi_nb.agent.commands", "stop"] for _, command in cluster.execs)  # through the pod
    run.wait(timeout=60)
    record = run.record()
    assert record["status"] == "stopped", record["exit"]
    assert record["checkpoints"][-1]["reason"] == "stopped" and record["checkpoints"][-1]["step"] == record["steps_completed"]
    job = job_name(run.run_id)
    wait_for(lambda: cluster.objects.get("jobs", "default", job) is None, timeout=30, what="the job deleted")


@pytest.mark.slow
def test_a_job_the_scheduler_cannot_place_is_pending_with_its_reason_and_not_billed(k8s, runs, capsys):
    cluster, _ = k8s
    run = runs["pending"]
    record = wait_for(lambda: (r := run.record())["queued"] and r, timeout=60, what="the scheduler's reason")
    assert record["status"] == "pending"
    assert record["queued"]["short"] == "Insufficient habana.ai/gaudi"
    assert record["queued"]["reason"].startswith("FailedScheduling: 0/2 nodes are available: 2 Insufficient habana.ai/gaudi")
    assert record["cost"]["usd"] is None  # nothing ran, nothing metered
    shown = json.loads(cli(capsys, "show", run.run_id, "--json").stdout)
    assert shown["status"] == "pending" and shown["queued"]["short"] == "Insufficient habana.ai/gaudi"
    assert "pending (FailedScheduling: 0/2 nodes are available" in cli(capsys, "show", run.run_id).stdout
    from gaudi_nb.cli import progress_line

    assert progress_line(record).plain.endswith("· pending: Insufficient habana.ai/gaudi")
    # gaudi-nb runs' row for it (the table itself cuts its widest cell to the terminal: 80 columns in CI)
    from gaudi_nb.runs_table import row_cells, run_row

    listed = next(r for r in gaudi_nb.api.runs() if r["run_id"] == run.run_id)
    assert row_cells(run_row(listed))[1] == "pending: Insufficient habana.ai/gaudi"
    assert cli(capsys, "runs").returncode == 0
    from gaudi_nb.api import stop

    assert stop(run.run_id).outcome == "ended"
    record = run.record()
    assert record["status"] == "stopped" and "before Kubernetes placed it" in record["exit"]["reason"]
    assert cluster.objects.get("jobs", "default", job_name(run.run_id)) is None


@pytest.mark.slow
def test_an_evicted_pod_ends_the_run_lost_with_kubernetes_reason(k8s, runs):
    cluster, _ = k8s
    run = runs["evict"]
    wait_for(lambda: run.record()["steps_completed"] >= 1 or run.done, timeout=120, what="a step")
    (pod,) = cluster.pods(labels=f"job-name={job_name(run.run_id)}")
    cluster.evict(pod["metadata"]["name"])
    evicted = time.monotonic()
    run.wait(timeout=30)
    record = run.record()
    assert time.monotonic() - evicted < 30
    assert record["status"] == "lost" and "Kubernetes evicted pod" in record["exit"]["reason"] and "low on resource: memory" in record["exit"]["reason"]


@pytest.mark.slow
def test_a_pod_deleted_behind_the_runs_back_ends_it_lost(k8s, runs):
    cluster, _ = k8s
    run = runs["deleted"]
    wait_for(lambda: run.record()["steps_completed"] >= 1 or run.done, timeout=120, what="a step")
    (pod,) = cluster.pods(labels=f"job-name={job_name(run.run_id)}")
    cluster.delete("pods", "default", pod["metadata"]["name"])  # kubectl delete pod, by someone else
    deleted = time.monotonic()
    run.wait(timeout=30)
    record = run.record()
    assert time.monotonic() - deleted < 30
    assert record["status"] == "lost" and "was deleted behind the run's back" in record["exit"]["reason"]


@pytest.mark.slow
def test_every_stream_follows_the_contract(k8s, runs):
    _, root = k8s
    broken = [problem for path in sorted((root / "home").rglob("events.jsonl")) if (problem := first_broken_event(path)) is not None]
    assert not broken, broken


# -- pure: what Kubernetes says of a pod, and the panel's word for a queued run -----------------------------


def _pod(phase, reason=None, message=None, agent=None, conditions=()):
    statuses = [{"name": "agent", "state": {"terminated": agent}}] if agent else []
    return {"metadata": {"name": "gnb-r-0-abcde"}, "status": {"phase": phase, "reason": reason, "message": message, "containerStatuses": statuses, "conditions": list(conditions)}}


def test_kubernetes_reasons_end_a_run_lost_or_failed():
    from gaudi_nb.targets.k8s_follow import ended_verdict, waiting_reason

    assert ended_verdict(_pod("Failed", "Evicted", "The node was low on resource: memory.")) == ("lost", "Kubernetes evicted pod gnb-r-0-abcde: The node was low on resource: memory.", True)
    status, reason, certain = ended_verdict(_pod("Failed", agent={"reason": "OOMKilled", "exitCode": 137}))
    assert (status, certain) == ("failed", True) and "OOMKilled (exit code 137)" in reason
    assert ended_verdict(_pod("Failed", agent={"reason": "Error", "exitCode": 1}))[2] is False  # its last events may still come: wait for them
    assert ended_verdict(_pod("Running")) is None and ended_verdict(_pod("Succeeded")) is None
    waiting = _pod("Pending", conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/4 nodes are available: 4 Insufficient habana.ai/gaudi."}])
    assert waiting_reason(waiting) == "0/4 nodes are available: 4 Insufficient habana.ai/gaudi." and waiting_reason(_pod("Pending")) is None


def test_the_panel_says_pending_with_the_schedulers_reason():
    from gaudi_nb.events import make_event
    from gaudi_nb.notebook.panel import PanelState, header_html

    state = PanelState("r")
    state.apply([make_event("job", "r", scheduler="kubernetes", state="PENDING", reason="FailedScheduling: 0/4 nodes are available: 4 Insufficient habana.ai/gaudi.",
                            short="Insufficient habana.ai/gaudi")])
    html = header_html(state)
    assert ">pending: Insufficient habana.ai/gaudi<" in html and 'title="FailedScheduling: 0/4 nodes are available' in html


@pytest.mark.slow
def test_the_standin_watches_from_a_resource_version_as_the_api_server_does(k8s):
    """A client whose watch dropped goes on from the last resourceVersion it saw: every change after it, none before."""
    from gaudi_nb.nodes.kube import Cluster as Client

    cluster, _ = k8s
    client = Client("standin", "team", str(cluster.kubeconfig))
    listed = client._json(client.core.list_namespaced_config_map, "team")
    for name in ("w1", "w2"):
        client.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": name}})
    response = client._call(client.core.list_namespaced_config_map, "team", watch=True, resource_version=listed["metadata"]["resourceVersion"], timeout_seconds=1)
    seen = [json.loads(line) for line in response.data.splitlines() if line.strip()]
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in seen] == [("ADDED", "w1"), ("ADDED", "w2")]
    after_first = seen[0]["object"]["metadata"]["resourceVersion"]
    response = client._call(client.core.list_namespaced_config_map, "team", watch=True, resource_version=after_first, timeout_seconds=1)
    assert [json.loads(line)["object"]["metadata"]["name"] for line in response.data.splitlines() if line.strip()] == ["w2"]
