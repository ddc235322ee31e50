"""gaudi_nb.k8s and `gaudi-nb k8s render`: every job kind rendered as the CLI prints it, checked against the real
schemas (kubernetes-validate for core kinds and every pod; the Kubeflow model packages for PyTorchJob and
TrainJob; the MPI Operator's CRD schema for MPIJob), and the render-time refusals. Pure rendering: no cluster."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest
import typer
import yaml
from conftest import wait_for
from typer.testing import CliRunner

from gaudi_nb import k8s
from gaudi_nb.errors import SpecError
from gaudi_nb.k8s import ClusterFacts, choose_kind, render
from gaudi_nb.k8s_cli import k8s_app
from gaudi_nb.spec import RunSpec

IMAGE = "registry.example.com/gaudi-nb:0.1.0-gaudi1.24"
RUN_ID = "tiny-llama-20261207-201900-ab12"
FACTS = ClusterFacts(image=IMAGE, storage_class="nfs-rwx", namespace="ml")
SECRET_VALUE = "hf_not-in-any-manifest-but-the-secret"


@pytest.fixture(scope="module")
def check():
    for module in ("kubernetes_validate", "kubeflow.training", "kubeflow_trainer_api", "jsonschema"):
        pytest.importorskip(module, reason="the real schemas come with the k8s extra")
    from gaudi_nb.k8s.check import validate

    return validate


def _cli(*args: str, env: Dict[str, str] | None = None):
    app = typer.Typer()
    app.add_typer(k8s_app, name="k8s")
    return CliRunner().invoke(app, ["k8s", "render", *args], env=env)


@pytest.fixture(scope="module")
def rendered() -> Dict[str, Tuple[str, List[Dict[str, Any]]]]:
    """`gaudi-nb k8s render --nodes 2 --devices 8 ...` for each kind: (the YAML printed, its documents)."""
    out = {}
    for kind in k8s.KINDS:
        result = _cli("--image", IMAGE, "--kind", kind, "--nodes", "2", "--devices", "8", "--storage-class", "nfs-rwx",
                      "--namespace", "ml", "--run-id", RUN_ID, "--env", "HF_TOKEN", "--max-steps", "20", "--check",
                      env={"HF_TOKEN": SECRET_VALUE})
        assert result.exit_code == 0, result.output
        out[kind] = (result.stdout, list(yaml.safe_load_all(result.stdout)))
    return out


def _by_kind(docs: List[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    return {d["kind"]: d for d in docs}


def _pods(doc: Dict[str, Any]) -> Iterator[Tuple[str, Dict[str, Any]]]:
    """(role, pod spec) of every pod a workload makes."""
    from gaudi_nb.k8s.check import pod_templates

    if doc["kind"] == "Job":
        yield "node", doc["spec"]["template"]["spec"]
    for where, template in pod_templates(doc):
        yield where.rsplit(".", 1)[-1], template["spec"]


def _env(container: Dict[str, Any]) -> Dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


# where each kind's pods are described (a TrainJob's in its TrainingRuntime)
WORKLOAD = {"trainjob": "TrainingRuntime", "pytorchjob": "PyTorchJob", "mpijob": "MPIJob", "job": "Job"}


# ------------------------------------------------------- the issue's done-when --


@pytest.mark.parametrize("kind", k8s.KINDS)
def test_every_kind_passes_the_real_schemas_and_gives_every_pod_what_gaudi_needs(rendered, check, kind):
    text, docs = rendered[kind]
    check(docs)  # the CLI's --check ran the same; here on what was printed
    assert "HABANA_VISIBLE_DEVICES" not in text  # the device plugin's to set: a value here overrides its allocation
    assert SECRET_VALUE not in text.replace(_by_kind(docs)["Secret"]["data"]["HF_TOKEN"], "")  # only base64, only in the Secret
    kinds = _by_kind(docs)
    assert all(d["metadata"]["namespace"] == "ml" and d["metadata"]["labels"][k8s.RUN_LABEL] == RUN_ID for d in docs)
    claim = kinds["PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"] and claim["spec"]["storageClassName"] == "nfs-rwx"
    workload = kinds[WORKLOAD[kind]]
    pods = list(_pods(workload))
    assert pods
    for role, pod in pods:
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["runs"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]  # one shared run folder
        container, *sidecars = pod["containers"]
        if role != "Worker" or kind != "mpijob":  # an MPIJob's workers run only sshd; every other pod runs an agent
            (log,) = sidecars
            assert container["name"] == k8s.AGENT_CONTAINER[kind] and log["name"] == k8s.LOG_CONTAINER
            assert "events.jsonl" in container["command"][-1] and "train.log" in log["command"][-1]
            assert log["securityContext"]["allowPrivilegeEscalation"] is False and "habana.ai/gaudi" not in log["resources"]["limits"]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        env = _env(container)
        assert mounts["runs"] == env["GAUDI_NB_HOME"] == k8s.HOME_DIR
        assert env["HF_TOKEN"] == {"secretKeyRef": {"name": kinds["Secret"]["metadata"]["name"], "key": "HF_TOKEN"}}
        assert env["GAUDI_NB_METRICS_HOST"] == "127.0.0.1"  # /metrics has no auth: loopback only
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        if role == "Launcher":
            continue
        limits = container["resources"]["limits"]
        assert limits == {"habana.ai/gaudi": "8", "hugepages-2Mi": "95000Mi", "memory": "409Gi"}
        assert container["securityContext"]["capabilities"]["add"] == ["SYS_NICE"]
        assert pod["hostIPC"] is True and volumes["hugepages"]["emptyDir"]["medium"] == "HugePages"
    spec = json.loads(kinds["ConfigMap"]["data"]["spec.json"])
    assert spec["devices"] == 8 and spec["nodes"] == 2 and spec["max_steps"] == 20 and spec["target"] == "local"


def test_processes_per_node_are_explicit_in_each_kind(rendered):
    """Trainer v2's numProcPerNode `auto` counts only "gpu" resources: on Gaudi it would start one process per CPU."""
    train = _by_kind(rendered["trainjob"][1])
    assert train["TrainJob"]["spec"]["trainer"]["numProcPerNode"] == 8
    assert train["TrainJob"]["spec"]["trainer"]["numNodes"] == 2
    assert train["TrainJob"]["spec"]["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "TrainingRuntime", "name": train["TrainingRuntime"]["metadata"]["name"]}
    torch_job = _by_kind(rendered["pytorchjob"][1])["PyTorchJob"]["spec"]
    assert torch_job["nprocPerNode"] == "8"
    assert torch_job["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["ports"][0]["name"] == "pytorchjob-port"
    assert torch_job["pytorchReplicaSpecs"]["Master"]["replicas"] == 1 and torch_job["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1
    assert _by_kind(rendered["mpijob"][1])["MPIJob"]["spec"]["slotsPerWorker"] == 8
    job = _by_kind(rendered["job"][1])["Job"]["spec"]
    assert job["completionMode"] == "Indexed" and job["completions"] == job["parallelism"] == 2
    for kind in ("trainjob", "pytorchjob", "job"):  # torchrun --nproc-per-node from the pods' spec, never picked by what a pod detects
        assert json.loads(_by_kind(rendered[kind][1])["ConfigMap"]["data"]["spec.json"])["launcher"] == "torchrun"


def test_mpijob_launcher_trains_on_gaudi_through_deepspeed(rendered):
    docs = rendered["mpijob"][1]
    spec = _by_kind(docs)["MPIJob"]["spec"]
    launcher, _ = spec["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"]
    env = _env(launcher)
    assert env["GAUDI_NB_ACCELERATOR"] == "hpu"  # it has no card: detecting would say cpu, and auto would be torchrun there
    assert env["GAUDI_NB_HOSTFILE"] == "/etc/mpi/hostfile"
    assert "habana.ai/gaudi" not in launcher["resources"]["limits"]
    assert json.loads(_by_kind(docs)["ConfigMap"]["data"]["spec.json"])["launcher"] == "deepspeed"
    assert "python3 -m gaudi_nb.agent" in launcher["command"][-1]
    (worker,) = spec["mpiReplicaSpecs"]["Worker"]["template"]["spec"]["containers"]  # only sshd: no agent, no log
    assert "sshd" in worker["command"][-1] and spec["mpiReplicaSpecs"]["Worker"]["replicas"] == 2


def test_indexed_job_reaches_node_0_through_its_headless_service(rendered):
    kinds = _by_kind(rendered["job"][1])
    service, job = kinds["Service"], kinds["Job"]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    pod = job["spec"]["template"]
    assert pod["spec"]["subdomain"] == service["metadata"]["name"]
    assert all(pod["metadata"]["labels"][k] == v for k, v in service["spec"]["selector"].items())
    env = _env(pod["spec"]["containers"][0])
    assert env["MASTER_ADDR"] == f"{job['metadata']['name']}-0.{service['metadata']['name']}" and env["WORLD_SIZE"] == "2"
    assert 'RANK="$JOB_COMPLETION_INDEX"' in pod["spec"]["containers"][0]["command"][-1]


def test_non_root_where_the_image_allows_it(rendered):
    # infra/docker's image runs as uid 1000; the MPIJob's pods run sshd, which needs root (Intel's and the operator's examples)
    _, pod = next(_pods(_by_kind(rendered["pytorchjob"][1])["PyTorchJob"]))
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 1000}
    assert pod["containers"][0]["securityContext"]["runAsNonRoot"] is True
    for _, pod in _pods(_by_kind(rendered["mpijob"][1])["MPIJob"]):
        assert "securityContext" not in pod and "runAsNonRoot" not in pod["containers"][0]["securityContext"]
    root = render(RunSpec(devices=8), RUN_ID, kind="job", cluster=ClusterFacts(image=IMAGE, run_as_user=0))
    assert "securityContext" not in root[-1]["spec"]["template"]["spec"]


# ------------------------------------------------------- refused at render time --


@pytest.mark.parametrize("args, says", [
    (["--launcher", "mpirun"], "launcher 'mpirun' starts one node"),  # the launch builder's own words
    (["--launcher", "torch.distributed.run"], "starts one node"),
    (["--devices", "3"], "devices=3 on a Gaudi node: Intel supports"),  # the module chooser's words
    (["--kind", "mpijob", "--launcher", "torchrun"], "DeepSpeed over ssh"),
    (["--kind", "pytorchjob", "--launcher", "deepspeed"], "--kind mpijob"),
    (["--kind", "cronjob"], "trainjob, pytorchjob, mpijob, job"),
    (["--kind", "job", "--storage-class", ""], "ReadWriteMany"),
])
def test_what_would_fail_on_the_cluster_is_one_line_and_exit_2(args, says):
    base = ["--image", IMAGE, "--nodes", "2", "--devices", "8", "--storage-class", "nfs-rwx"]
    result = _cli(*base, *args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], lines


def test_refusals_of_the_builder_itself():
    with pytest.raises(SpecError, match="one node would train on nothing"):
        render(RunSpec(devices=8), RUN_ID, kind="mpijob", cluster=FACTS)
    with pytest.raises(SpecError, match="HF_TOKEN: not set"):
        render(RunSpec(env="HF_TOKEN"), RUN_ID, kind="job", cluster=FACTS, environ={})
    with pytest.raises(SpecError, match="image"):
        render(RunSpec(), RUN_ID, kind="job", cluster=ClusterFacts())
    with pytest.raises(SpecError, match="namespace"):
        render(RunSpec(), RUN_ID, kind="job", cluster=ClusterFacts(image=IMAGE, namespace="Not_Valid"))
    with pytest.raises(SpecError, match="run id"):
        render(RunSpec(), 'x"; rm -rf /', kind="job", cluster=FACTS)
    # across nodes a claim the cluster already has is enough; one node makes a ReadWriteOnce claim of its own
    shared = render(RunSpec(devices=8, nodes=2), RUN_ID, kind="mpijob", cluster=ClusterFacts(image=IMAGE, claim="team-runs"))
    assert "PersistentVolumeClaim" not in _by_kind(shared)
    assert all(pod["volumes"][1]["persistentVolumeClaim"]["claimName"] == "team-runs" for _, pod in _pods(shared[-1]))
    one = _by_kind(render(RunSpec(devices=8), RUN_ID, kind="job", cluster=ClusterFacts(image=IMAGE)))
    assert one["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteOnce"] and "Service" not in one


def test_choose_kind_prefers_trainer_v2_then_pytorchjob_then_mpijob():
    assert choose_kind(None) == "mpijob"  # Intel's documented multi-node path
    assert choose_kind(ClusterFacts(kinds=("mpijob", "pytorchjob", "trainjob"))) == "trainjob"
    assert choose_kind(ClusterFacts(kinds=("mpijob", "pytorchjob"))) == "pytorchjob"
    assert choose_kind(ClusterFacts(kinds=("mpijob",))) == "mpijob"
    assert choose_kind(ClusterFacts()) == "job"
    assert choose_kind(ClusterFacts(kinds=("trainjob",)), nodes=1) == "job"
    result = _cli("--image", IMAGE, "--devices", "8", "--run-id", RUN_ID)
    assert result.exit_code == 0 and [d["kind"] for d in yaml.safe_load_all(result.stdout)][-1] == "Job"


# ------------------------------------------------------------- the schemas bite --


def test_validation_names_a_field_no_schema_knows(rendered, check):
    cases = {
        "job": lambda d: d["Job"]["spec"]["template"]["spec"]["containers"][0].update(resourcez={}),
        "pytorchjob": lambda d: d["PyTorchJob"]["spec"].update(nprocPerNodes="8"),
        "trainjob": lambda d: d["TrainJob"]["spec"]["trainer"].update(numProcsPerNode=8),
        "mpijob": lambda d: d["MPIJob"]["spec"].update(slotPerWorker=8),
    }
    for kind, breaks in cases.items():
        docs = copy.deepcopy(rendered[kind][1])
        breaks(_by_kind(docs))
        with pytest.raises(SpecError, match="resourcez|nprocPerNodes|numProcsPerNode|slotPerWorker"):
            check(docs)
    # a pod inside a custom resource goes through the core schema too
    docs = copy.deepcopy(rendered["mpijob"][1])
    _by_kind(docs)["MPIJob"]["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]["hostIPC"] = "yes"
    with pytest.raises(SpecError, match="hostIPC"):
        check(docs)
    docs = copy.deepcopy(rendered["trainjob"][1])
    _by_kind(docs)["TrainJob"]["spec"]["trainer"]["numProcPerNode"] = "auto"
    with pytest.raises(SpecError, match="numProcPerNode"):
        check(docs)


# ------------------------------------------------------- what travels with a run --


def test_script_dataset_and_workdir_travel_in_the_config_map_and_the_pod_lays_them_out(tmp_path):
    """The pods' start command, run here by bash with the paths pointed at folders: it lays out the run
    folder the agent reads (spec.json, run.json, script.py, code/, inputs/) and execs the agent on it."""
    work = tmp_path / "work"
    (work / "pkg").mkdir(parents=True)
    (work / "pkg" / "helper.py").write_text("X = 1\n")
    script = work / "train.py"
    script.write_text("print('hi')\n")
    data = tmp_path / "my corpus.txt"
    data.write_text("hello gaudi\n")
    spec = RunSpec(script=str(script), workdir=str(work), dataset=str(data))
    docs = _by_kind(render(spec, RUN_ID, kind="job", cluster=FACTS))
    files = tmp_path / "files"
    files.mkdir()
    for key, value in docs["ConfigMap"]["data"].items():
        (files / key).write_text(value)
    import base64

    for key, value in docs["ConfigMap"]["binaryData"].items():
        (files / key).write_bytes(base64.b64decode(value))
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python3").write_text('#!/bin/sh\necho "$@" >> "$GAUDI_NB_HOME/calls"\n')
    (fake / "python3").chmod(0o755)
    home = tmp_path / "home"
    container, log = docs["Job"]["spec"]["template"]["spec"]["containers"]
    env = {"PATH": f"{fake}:{os.environ['PATH']}", "HOSTNAME": "pod-x", "GAUDI_NB_HOME": str(home), "GAUDI_NB_FILES": str(files), "JOB_COMPLETION_INDEX": "0"}
    subprocess.run(container["command"], env=env, check=True, timeout=30)
    subprocess.run(log["command"], env=env, check=True, timeout=30)
    folder = Path(k8s.part_path(RUN_ID, 0, str(home)))
    calls = wait_for(lambda: len((home / "calls").read_text().splitlines()) == 3 and (home / "calls").read_text().splitlines(), timeout=30)
    events, agent, train_log = sorted(calls, key=lambda c: ("events" not in c, "train.log" in c))
    assert agent.split() == ["-m", "gaudi_nb.agent", "--run-dir", str(folder)]  # started in the background
    assert events.split() == ["-m", "gaudi_nb.agent.commands", "tail", "--path", f"{folder}/events.jsonl", "--offset", "0", "--follow", "--run-dir", str(folder)]
    assert train_log.split()[:4] == ["-m", "gaudi_nb.agent.commands", "tail", "--path"] and train_log.split()[4] == f"{folder}/logs/train.log"
    assert json.loads((folder / "run.json").read_text()) == {"run_id": RUN_ID, "node": f"{k8s.object_name(RUN_ID)}-0", "hostname": "pod-x", "target": "k8s"}
    carried = RunSpec.model_validate_json((folder / "spec.json").read_text())
    assert carried.target == "local" and carried.dataset == "inputs/0-my-corpus.txt"  # the ranks run in the run folder
    assert (folder / carried.dataset).read_text() == "hello gaudi\n"
    assert (folder / "script.py").read_text() == "print('hi')\n"
    assert (folder / "code" / "pkg" / "helper.py").read_text() == "X = 1\n"


def test_each_node_gets_the_run_json_the_client_wrote_for_it(tmp_path):
    runs = [{"run_id": RUN_ID, "node": f"n{i}", "cluster": {"node_rank": i, "master_port": 29501}} for i in range(2)]
    docs = _by_kind(render(RunSpec(devices=8, nodes=2), RUN_ID, kind="job", cluster=FACTS, runs=runs))
    files = tmp_path / "files"
    files.mkdir()
    for key, value in docs["ConfigMap"]["data"].items():
        (files / key).write_text(value)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python3").write_text("#!/bin/sh\nexit 0\n")
    (fake / "python3").chmod(0o755)
    command = docs["Job"]["spec"]["template"]["spec"]["containers"][0]["command"]
    env = {"PATH": f"{fake}:{os.environ['PATH']}", "GAUDI_NB_HOME": str(tmp_path / "home"), "GAUDI_NB_FILES": str(files), "JOB_COMPLETION_INDEX": "1"}
    subprocess.run(command, env=env, check=True, timeout=30)
    assert json.loads(Path(k8s.part_path(RUN_ID, 1, str(tmp_path / "home")), "run.json").read_text()) == runs[1]


def test_trackers_settings_travel_in_the_secret_as_they_do_to_an_ssh_node():
    import base64

    environ = {"MLFLOW_TRACKING_URI": "http://mlflow.ml.svc:5000", "HF_TOKEN": "hf_x", "UNRELATED": "no"}
    docs = _by_kind(render(RunSpec(report_to="mlflow", env="HF_TOKEN"), RUN_ID, kind="job", cluster=FACTS, environ=environ))
    secret = docs["Secret"]["data"]
    assert {k: base64.b64decode(v).decode() for k, v in secret.items()} == {"MLFLOW_TRACKING_URI": "http://mlflow.ml.svc:5000", "HF_TOKEN": "hf_x"}
    env = _env(docs["Job"]["spec"]["template"]["spec"]["containers"][0])
    assert env["MLFLOW_TRACKING_URI"] == {"secretKeyRef": {"name": docs["Secret"]["metadata"]["name"], "key": "MLFLOW_TRACKING_URI"}}
    assert "UNRELATED" not in env and "Secret" not in _by_kind(render(RunSpec(), RUN_ID, kind="job", cluster=FACTS, environ=environ))


def test_a_working_directory_too_big_for_a_config_map_is_refused(tmp_path):
    (tmp_path / "big.bin").write_bytes(os.urandom(1024 * 1024))
    (tmp_path / "train.py").write_text("print('hi')\n")
    with pytest.raises(SpecError, match="more than a ConfigMap holds"):
        render(RunSpec(script=str(tmp_path / "train.py"), workdir=str(tmp_path)), RUN_ID, kind="job", cluster=FACTS)
    with pytest.raises(SpecError, match="--script .*big.bin"):
        render(RunSpec(script=str(tmp_path / "big.bin")), RUN_ID, kind="job", cluster=FACTS)


# ------------------------------------------------------------------ the rest --


def test_hugepages_are_one_number_for_render_and_doctor():
    from gaudi_nb import doctor
    from gaudi_nb.k8s import facts

    assert doctor.K8S_HUGEPAGES_MIB == facts.HUGEPAGES_2MI_MIB == 95000
    job = render(RunSpec(devices=8), RUN_ID, kind="job", cluster=FACTS)[-1]
    assert job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["hugepages-2Mi"] == f"{doctor.K8S_HUGEPAGES_MIB}Mi"
    cpu = render(RunSpec(devices=2), RUN_ID, kind="job", cluster=ClusterFacts(image=IMAGE, gaudi_nodes=False))[-1]["spec"]["template"]["spec"]
    assert cpu["containers"][0]["resources"]["limits"] == {"memory": "409Gi"} and "hostIPC" not in cpu


def test_names_are_dns_labels_from_the_run_id():
    for run_id in (RUN_ID, "42-run", "My_Run.v2-" + "x" * 120):
        name = k8s.object_name(run_id)
        assert len(name) <= 52 and name[0].isalpha() and name[-1].isalnum()
        assert all(c.islower() or c.isdigit() or c == "-" for c in name)
    assert k8s.object_name(RUN_ID) == RUN_ID


def test_yaml_is_one_stream_kubectl_reads_back_identically(rendered, tmp_path):
    text, docs = rendered["mpijob"]
    assert text.count("\n---\n") == len(docs) - 1
    assert k8s.to_yaml(docs) == text
    assert "spec.json: |" in text
    out = tmp_path / "run.yaml"
    result = _cli("--image", IMAGE, "--devices", "2", "--run-id", RUN_ID, "--output", str(out))
    assert result.exit_code == 0 and "kubectl apply -f" in result.output
    assert [d["kind"] for d in yaml.safe_load_all(out.read_text())] == ["ConfigMap", "PersistentVolumeClaim", "Job"]


def test_renderer_does_not_import_a_kubernetes_client():
    code = (
        "import sys; from gaudi_nb import k8s; from gaudi_nb.spec import RunSpec; "
        "k8s.to_yaml(k8s.render(RunSpec(devices=8, nodes=2), 'r-1', kind='mpijob', cluster=k8s.ClusterFacts(image='x:1', claim='c'))); "
        "assert not {'kubernetes', 'kubeflow', 'kubernetes_validate'} & set(sys.modules), 'render imported a client'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})


def test_check_without_the_extra_names_it(monkeypatch):
    from gaudi_nb.errors import MissingExtraError
    from gaudi_nb.k8s.check import validate

    monkeypatch.setitem(sys.modules, "kubernetes_validate", None)  # import now raises ImportError
    with pytest.raises(MissingExtraError, match=r"gaudi_nb\[k8s\]"):
        validate(render(RunSpec(), RUN_ID, kind="job", cluster=FACTS))


def test_a_rendered_multi_node_job_gives_each_node_what_it_needs_to_start():
    from gaudi_nb.launch import build_launch
    from gaudi_nb.launch.cluster import cluster_launch_options, parse_hostfile

    # MPIJob: the launcher reads the hostfile the MPI operator mounts (render sets GAUDI_NB_HOSTFILE)
    hostfile = "job-worker-0.job.ml.svc slots=8\njob-worker-1.job.ml.svc slots=8\n"
    assert parse_hostfile("# workers\n" + hostfile + "\n") == ["job-worker-0.job.ml.svc", "job-worker-1.job.ml.svc"]
    options = cluster_launch_options({"GAUDI_NB_HOSTFILE": "/etc/mpi/hostfile"}, nodes=2, read=lambda path: hostfile)
    assert options == {"hosts": ["job-worker-0.job.ml.svc", "job-worker-1.job.ml.svc"], "master_addr": "job-worker-0.job.ml.svc"}
    spec = RunSpec(devices=8, nodes=2, launcher="deepspeed")
    plan = build_launch(spec, ["-m", "gaudi_nb.worker"], accelerator="cpu", **options)
    assert plan.files["hostfile"].splitlines() == ["job-worker-0.job.ml.svc slots=8", "job-worker-1.job.ml.svc slots=8"]
    with pytest.raises(SpecError, match="lists 2 host"):
        cluster_launch_options({"GAUDI_NB_HOSTFILE": "/etc/mpi/hostfile"}, nodes=3, read=lambda path: hostfile)

    # PyTorchJob (and TrainJob, indexed Job through their start lines): each pod's node rank and the master
    pod = {"RANK": "1", "MASTER_ADDR": "job-master-0", "MASTER_PORT": "23456", "WORLD_SIZE": "2"}
    options = cluster_launch_options(pod, nodes=2)
    assert options == {"node_rank": 1, "master_addr": "job-master-0", "master_port": 23456}
    plan = build_launch(RunSpec(devices=2, nodes=2, launcher="torchrun"), ["-m", "gaudi_nb.worker"], accelerator="cpu", **options)
    assert "--node-rank" in plan.argv and plan.argv[plan.argv.index("--node-rank") + 1] == "1"
    assert any("job-master-0" in a for a in plan.argv) and any("23456" in a for a in plan.argv)
    assert cluster_launch_options({"RANK": "0"}, nodes=1) == {}  # a one-node run is not a cluster job
