"""A cluster with the Kubeflow operators installed: a run submits the kind the cluster has (TrainJob, then PyTorchJob,
then MPIJob, else an indexed Job) and is followed through that kind's pods.

One stand-in (tests/k8s_standin, its operators.py turning a PyTorchJob or a TrainJob into the pods the real
operators make) with Trainer v2, the Training Operator and the MPI Operator in discovery; attach records them, and
a run's submitted object is a TrainJob whose pods carry Trainer v2's labels and environment (fast: stopped while
the scheduler cannot place them). Attached while only the Training Operator
is in discovery, a run is a PyTorchJob; while only the MPI Operator is, an MPIJob (stored, not run: no ssh between
the stand-in's pods). Slow: a two-node PyTorchJob and a two-node TrainJob train to their end with events from both
pods, and a PyTorchJob whose worker is evicted ends lost."""
import os
import sys
import time
from pathlib import Path

import pytest
from conftest import first_broken_event, wait_for
from k8s_standin import Cluster
from scriptrun import LOOP

import gaudi_nb
from gaudi_nb.errors import SpecError
from gaudi_nb.k8s import RUN_LABEL
from gaudi_nb.targets.k8s_submit import job_name


@pytest.fixture(scope="module")
def k8s(tmp_path_factory):
    root = tmp_path_factory.mktemp("k8sops")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GAUDI_NB_HOME", str(root / "home"))
        patch.delenv("GAUDI_NB_STORE_URL", raising=False)
        patch.setenv("GAUDI_NB_ACCELERATOR", "cpu")
        patch.setenv("GAUDI_NB_MASTER_ADDR", "127.0.0.1")  # no cluster DNS for <job>-master-0
        env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "PYTHONPATH": os.environ.get("PYTHONPATH", ""), "GAUDI_NB_ACCELERATOR": "cpu"}
        cluster = Cluster(root / "cluster", nodes={"gaudi-a": 4, "gaudi-b": 4}, base_env=env, operators=("trainjob", "pytorchjob", "mpijob"))
        loop = root / "loop.py"
        loop.write_text(LOOP.format(step_s=0.05))
        try:
            yield cluster, root, loop
        finally:
            cluster.close()


def _attach(cluster, name):
    return gaudi_nb.attach("k8s://standin/default", name=name, kubeconfig=str(cluster.kubeconfig), storage_class="shared", image="gaudi-nb:test", price_per_hour=10.0)


@pytest.fixture(scope="module")
def attached(k8s):
    """The cluster attached three times: with every operator ("both": Trainer v2 first), with only the Training
    Operator ("pt"), and with only the MPI Operator ("mpi")."""
    cluster, _, _ = k8s
    both = _attach(cluster, "both")
    try:
        cluster.operators = ["pytorchjob"]  # Trainer v2 uninstalled: the Training Operator's kind is the first there
        pt = _attach(cluster, "pt")
        cluster.operators = ["mpijob"]  # only the MPI Operator (the stand-in stores an MPIJob, it runs no launcher)
        mpi = _attach(cluster, "mpi")
    finally:
        cluster.operators = ["trainjob", "pytorchjob", "mpijob"]
    return {"both": both["resources"]["kubernetes"], "pt": pt["resources"]["kubernetes"], "mpi": mpi["resources"]["kubernetes"]}


def test_attach_records_the_installed_kinds_and_a_run_submits_a_trainjob(k8s, attached):
    cluster, _, loop = k8s
    facts = attached["both"]
    assert facts["job_kinds"] == ["trainjob", "pytorchjob", "mpijob", "job"] and facts["kind"] == "trainjob"
    assert attached["pt"]["job_kinds"] == ["pytorchjob", "job"] and attached["pt"]["kind"] == "pytorchjob"
    reviewed = [body["spec"]["resourceAttributes"] for kind, body in cluster.received if kind == "selfsubjectaccessreviews"]
    assert {"verb": "create", "group": "trainer.kubeflow.org", "resource": "trainjobs", "namespace": "default", "subresource": ""} in reviewed
    # 8 cards a node, on nodes of 4: the pods wait for the scheduler, so nothing trains in the fast lane
    run = gaudi_nb.train(target="both", nodes=2, devices=8, max_steps=5, script=str(loop))
    name = job_name(run.run_id)
    submitted = {body["kind"]: body for _, body in cluster.received if body.get("metadata", {}).get("name", "").startswith(name)}
    assert submitted["TrainJob"]["spec"]["trainer"]["numNodes"] == 2 and submitted["TrainJob"]["spec"]["runtimeRef"]["name"] == name
    assert "TrainingRuntime" in submitted and "Job" not in submitted and "Service" not in submitted
    # Trainer v2's pods: one per node, each with its completion index and the PET_* place, the run label on each
    pods = wait_for(lambda: len(p := cluster.pods(labels=f"{RUN_LABEL}={run.run_id}")) == 2 and p, timeout=30, what="the TrainJob's pods")
    assert sorted(p["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"] for p in pods) == ["0", "1"]
    assert all(p["metadata"]["labels"]["jobset.sigs.k8s.io/replicatedjob-name"] == "node" for p in pods)
    env = {e["name"] for e in next(c for c in pods[0]["spec"]["containers"] if c["name"] == "node")["env"]}
    assert {"PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT"} <= env
    from gaudi_nb.api import stop

    assert stop(run.run_id).outcome == "ended" and run.record()["status"] == "stopped"
    # the stop deleted the TrainJob (and its runtime), and the pods went with it (their owner)
    wait_for(lambda: cluster.objects.get("trainjobs", "default", name) is None and not cluster.pods(labels=f"{RUN_LABEL}={run.run_id}"), timeout=30, what="the TrainJob and its pods deleted")
    assert cluster.objects.get("trainingruntimes", "default", name) is None


def test_render_with_an_attached_cluster_prints_the_kind_train_would_submit_there(k8s, attached):
    """`gaudi-nb k8s render --cluster NAME` is what `train --target NAME` submits: the cluster's kind, namespace and storage."""
    import yaml
    from typer.testing import CliRunner

    from gaudi_nb.cli import app

    for name, kind in (("pt", "PyTorchJob"), ("both", "TrainJob")):
        result = CliRunner().invoke(app, ["k8s", "render", "--cluster", name, "--nodes", "2", "--devices", "8", "--script", str(k8s[2])])
        assert result.exit_code == 0, result.output
        documents = list(yaml.safe_load_all(result.output))
        assert kind in {d["kind"] for d in documents}
        claim = next(d for d in documents if d["kind"] == "PersistentVolumeClaim")
        assert claim["spec"]["storageClassName"] == "shared" and documents[-1]["spec"]  # the cluster's storage class, attached once
    refused = CliRunner().invoke(app, ["k8s", "render", "--nodes", "2", "--devices", "8"])
    assert refused.exit_code == 2 and "--cluster NAME" in refused.output


def test_the_run_label_reaches_every_pod_template_of_every_kind():
    from gaudi_nb.k8s import ClusterFacts, render
    from gaudi_nb.spec import RunSpec

    spec = RunSpec(model="tiny-llama", nodes=2, devices=8, max_steps=1)
    templates = {
        "job": lambda docs: [docs["Job"]["spec"]["template"]],
        "pytorchjob": lambda docs: [r["template"] for r in docs["PyTorchJob"]["spec"]["pytorchReplicaSpecs"].values()],
        "mpijob": lambda docs: [r["template"] for r in docs["MPIJob"]["spec"]["mpiReplicaSpecs"].values()],
        "trainjob": lambda docs: [j["template"]["spec"]["template"] for j in docs["TrainingRuntime"]["spec"]["template"]["spec"]["replicatedJobs"]],
    }
    for kind, find in templates.items():
        docs = {d["kind"]: d for d in render(spec, "r-1", kind=kind, cluster=ClusterFacts(image="i", storage_class="rwx"), environ={})}
        assert [t["metadata"]["labels"][RUN_LABEL] for t in find(docs)] == ["r-1"] * len(find(docs)), kind


def test_a_cluster_with_only_the_mpi_operator_gets_an_mpijob_followed_through_its_launcher(k8s, attached):
    cluster, _, loop = k8s
    assert attached["mpi"]["job_kinds"] == ["mpijob", "job"]
    run = gaudi_nb.train(target="mpi", nodes=2, devices=1, max_steps=5, script=str(loop))
    name = job_name(run.run_id)
    mpijob = cluster.objects.get("mpijobs", "default", name)
    assert mpijob is not None and mpijob["spec"]["mpiReplicaSpecs"]["Worker"]["replicas"] == 2
    from gaudi_nb.targets import target_for

    target = target_for("mpi")
    assert target.kind_of(run.run_id) == "mpijob"
    assert [p.name for p in target.place(run.run_id)] == [f"{name}-0"]  # the launcher's agent is every node's: one part
    from gaudi_nb.api import stop

    assert stop(run.run_id).outcome == "ended"  # no launcher pod here: it ends at once
    assert cluster.objects.get("mpijobs", "default", name) is None
    # without --image the pods would install gaudi_nb at start, which an MPIJob's ssh-started ranks cannot use: refused first
    cluster.operators = ["mpijob"]
    try:
        gaudi_nb.attach("k8s://standin/default", name="mpi-bare", kubeconfig=str(cluster.kubeconfig), storage_class="shared")
    finally:
        cluster.operators = ["trainjob", "pytorchjob", "mpijob"]
    before = len(cluster.received)
    with pytest.raises(SpecError, match="has only the MPI Operator and no --image"):
        gaudi_nb.train(target="mpi-bare", nodes=2, devices=1, max_steps=5, script=str(loop))
    assert len(cluster.received) == before  # nothing submitted


def test_a_pytorchjob_the_scheduler_cannot_place_is_pending_with_its_reason(k8s, attached):
    cluster, _, loop = k8s
    run = gaudi_nb.train(target="pt", nodes=2, devices=8, max_steps=5, script=str(loop))
    name = job_name(run.run_id)
    assert cluster.objects.get("pytorchjobs", "default", name) is not None
    record = wait_for(lambda: (r := run.record())["queued"] and r, timeout=60, what="the scheduler's reason")
    assert record["status"] == "pending" and record["queued"]["short"] == "Insufficient habana.ai/gaudi"
    from gaudi_nb.api import stop

    assert stop(run.run_id).outcome == "ended"
    assert run.record()["status"] == "stopped" and cluster.objects.get("pytorchjobs", "default", name) is None


@pytest.fixture(scope="module")
def started(k8s, attached):
    """The slow tests' runs, started together (their pods share two cores): a two-node PyTorchJob and TrainJob to their
    end, a PyTorchJob whose worker will be evicted, and a run on the cluster attached without --image."""
    cluster, root, loop = k8s
    slow = root / "slow.py"
    slow.write_text(LOOP.format(step_s=0.2))
    gaudi_nb.attach("k8s://standin/default", name="bare", kubeconfig=str(cluster.kubeconfig), storage_class="shared")
    return {"evicted": gaudi_nb.train(target="pt", nodes=2, devices=1, max_steps=5000, script=str(slow)),
            "bare": gaudi_nb.train(target="bare", nodes=1, devices=1, max_steps=5000, script=str(slow)),
            **{kind: gaudi_nb.train(target=target, nodes=2, devices=1, max_steps=5, script=str(loop)) for kind, target in (("PyTorchJob", "pt"), ("TrainJob", "both"))}}


@pytest.mark.slow
def test_two_node_runs_as_a_pytorchjob_and_a_trainjob_train_to_their_end_with_events_from_both_pods(k8s, started):
    cluster, root, loop = k8s
    evicted = started["evicted"]
    for kind, run in ((k, started[k]) for k in ("PyTorchJob", "TrainJob")):
        run.wait(timeout=120)
        record = run.record()
        assert record["status"] == "succeeded", (kind, record["exit"])
        name = job_name(run.run_id)
        assert kind in [body["kind"] for _, body in cluster.received if body.get("metadata", {}).get("name") == name] and "Job" not in [
            body["kind"] for _, body in cluster.received if body.get("metadata", {}).get("name") == name]
        events = run.events()
        assert [e["step"] for e in events if e["type"] == "step"] == [1, 2, 3, 4, 5]
        # each pod's agent found its node in what the operator set: the PyTorchJob's master is node 0 (RANK), the
        # TrainJob's pods their completion index (PET_NODE_RANK)
        assert sorted((e["node"], e["rank"], e["world_size"]) for e in events if e["type"] == "worker_start") == [(f"{name}-0", 0, 2), (f"{name}-1", 1, 2)]
        ends = [e for e in events if e["type"] == "run_end"]
        assert len(ends) == 1 and {n: v["status"] for n, v in ends[0]["nodes"].items()} == {f"{name}-0": "succeeded", f"{name}-1": "succeeded"}
        # the run's end deleted the custom resource, and with it its pods
        wait_for(lambda kind=kind, name=name, run=run: cluster.objects.get(kind.lower() + "s", "default", name) is None and not cluster.pods(labels=f"{RUN_LABEL}={run.run_id}"),
                 timeout=30, what=f"the {kind} deleted")
    # a PyTorchJob's worker evicted behind the run's back ends the run lost, with Kubernetes's reason
    wait_for(lambda: evicted.record()["steps_completed"] >= 1 or evicted.done, timeout=120, what="a step")
    cluster.evict(f"{job_name(evicted.run_id)}-worker-0")
    when = time.monotonic()
    evicted.wait(timeout=30)
    record = evicted.record()
    assert time.monotonic() - when < 30 and record["status"] == "lost" and "Kubernetes evicted pod" in record["exit"]["reason"], record["exit"]
    wait_for(lambda: not cluster.pods(labels=f"{RUN_LABEL}={evicted.run_id}"), timeout=30, what="the evicted run's PyTorchJob deleted with its pods")
    broken = [problem for path in sorted((root / "home").rglob("events.jsonl")) if (problem := first_broken_event(path)) is not None]
    assert not broken, broken


@pytest.mark.slow
def test_a_cluster_attached_without_an_image_installs_this_clients_build_in_its_pods(k8s, started):
    """No --image: the pods run Intel's image and pip-install this client's wheel (its own ConfigMap, made once per
    build) onto the run volume at start; every container's Python imports gaudi_nb from there."""
    cluster, root, loop = k8s
    run = started["bare"]
    wait_for(lambda: run.record()["steps_completed"] >= 1 or run.done, timeout=120, what="a step")
    (pod,) = cluster.pods(labels=f"{RUN_LABEL}={run.run_id}")
    agent = pod["spec"]["containers"][0]
    assert agent["image"].startswith("vault.habana.ai/gaudi-docker/")
    (client,) = [v["configMap"]["name"] for v in pod["spec"]["volumes"] if v["name"] == "client"]
    wheel = cluster.objects.get("configmaps", "default", client)
    (name,) = wheel["binaryData"]
    from gaudi_nb import __version__

    assert name == f"gaudi_nb-{__version__}-py3-none-any.whl"
    import subprocess

    for container in ("agent", "log"):  # what an exec in each container imports (a stop runs there)
        argv, env, cwd = cluster.kubelet.exec_command(pod, container, ["python3", "-c", "import gaudi_nb; print(gaudi_nb.__file__)"])
        where = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=60).stdout.strip()
        assert where == str(root / "cluster" / "volumes" / "default" / f"{job_name(run.run_id)}-runs" / "env" / client.rsplit("-", 1)[1] / "gaudi_nb" / "__init__.py"), where
    # a second run of the same build finds the wheel's ConfigMap there already (never placed: 8 cards on no node)
    second = gaudi_nb.train(target="bare", nodes=1, devices=8, max_steps=5, script=str(loop))
    from gaudi_nb.api import stop

    assert stop(second.run_id).outcome == "ended"
    assert stop(run.run_id).outcome == "requested"  # through an exec in the pod, whose Python has the installed build
    run.wait(timeout=60)
    assert run.record()["status"] == "stopped"
    assert cluster.objects.get("configmaps", "default", client) is not None  # kept for the build's next run
    # nothing the install says reaches the agent container's stdout, the node's event stream
    problem = first_broken_event(next((root / "home" / "runs" / run.run_id / "nodes").rglob("events.jsonl")))
    assert problem is None, problem
