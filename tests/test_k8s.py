"""gaudi_nb.k8s and `gaudi-nb k8s render`: manifests checked with the kubernetes client's models."""
from __future__ import annotations

import json
from typing import Any, Dict, List

import pytest
import yaml

from gaudi_nb import k8s
from gaudi_nb.errors import SpecError
from gaudi_nb.spec import RunSpec

IMAGE = "registry.example.com/gaudi-nb:0.1.0-gaudi1.24"


@pytest.fixture(scope="module")
def kube():
    return pytest.importorskip("kubernetes", reason="the kubernetes client validates the manifests (k8s extra)")


def _by_kind(manifests: List[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    return {m["kind"]: m for m in manifests}


def _deserialize(kube, data: Dict[str, Any], model: str):
    return kube.client.ApiClient()._ApiClient__deserialize(data, model)


def _env(container: Dict[str, Any]) -> Dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"]}


# ------------------------------------------------------------------ one node --


def test_one_node_is_a_config_map_and_a_job(kube):
    spec = RunSpec(model="tiny-llama", devices=8, max_steps=200, lazy_mode=True)
    manifests = k8s.render(spec, image=IMAGE, namespace="ml")
    assert [m["kind"] for m in manifests] == ["ConfigMap", "Job"]
    config_map, job = manifests

    cm = _deserialize(kube, config_map, "V1ConfigMap")
    assert cm.metadata.namespace == "ml"
    carried = RunSpec(**json.loads(cm.data["spec.json"]))
    assert carried.model_copy(update={"target": spec.target}) == spec
    assert carried.target == "local"

    model = _deserialize(kube, job, "V1Job")
    assert model.api_version == "batch/v1" and model.kind == "Job"
    assert model.metadata.namespace == "ml"
    pod = model.spec.template.spec
    assert pod.host_ipc is True
    assert pod.restart_policy == "Never"
    (container,) = pod.containers
    assert container.image == IMAGE
    assert container.command == ["gaudi-nb", "train", "--spec-file", "/etc/gaudi-nb/spec.json", "--json"]
    limits = container.resources.limits
    assert limits["habana.ai/gaudi"] == "8"
    assert limits["hugepages-2Mi"] == "42000Mi" and "memory" in limits
    assert "SYS_NICE" in container.security_context.capabilities.add
    env = {e.name: e.value for e in container.env}
    assert env["HABANA_VISIBLE_DEVICES"] == "all"
    assert env["OMPI_MCA_btl_vader_single_copy_mechanism"] == "none"
    assert env["PT_HPU_LAZY_MODE"] == "1"

    mounts = {m.name: m for m in container.volume_mounts}
    volumes = {v.name: v for v in pod.volumes}
    assert mounts["dshm"].mount_path == "/dev/shm" and volumes["dshm"].empty_dir.medium == "Memory"
    assert mounts["spec"].mount_path == "/etc/gaudi-nb" and mounts["spec"].read_only
    assert volumes["spec"].config_map.name == config_map["metadata"]["name"]
    assert volumes["hugepages"].empty_dir.medium == "HugePages"


def test_job_round_trips_through_the_models_unchanged(kube):
    # What the client serializes back is what we wrote: no field was unknown.
    for manifest in k8s.render(RunSpec(devices=8), image=IMAGE):
        model = _deserialize(kube, manifest, f"V1{manifest['kind']}")
        assert kube.client.ApiClient().sanitize_for_serialization(model) == manifest
    k8s.validate(k8s.render(RunSpec(devices=8), image=IMAGE))


def test_prometheus_annotations_name_the_metrics_port(kube):
    job = _by_kind(k8s.render(RunSpec(devices=4), image=IMAGE, metrics_port=9555))["Job"]
    annotations = job["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "9555"
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert {"name": "metrics", "containerPort": 9555, "protocol": "TCP"} in container["ports"]
    assert _env(container)["GAUDI_NB_METRICS_PORT"] == "9555"


def test_eager_mode_and_no_hugepages(kube):
    job = _by_kind(k8s.render(RunSpec(devices=1, lazy_mode=False), image=IMAGE, hugepages_2mi=None))["Job"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert _env(container)["PT_HPU_LAZY_MODE"] == "0"
    assert "hugepages-2Mi" not in container["resources"]["limits"]
    assert all(v["name"] != "hugepages" for v in job["spec"]["template"]["spec"]["volumes"])
    _deserialize(kube, job, "V1Job")


def test_names_are_dns_labels_and_follow_the_spec():
    a = k8s.run_name(RunSpec(name="My Run #1 (Llama 3)", devices=8))
    b = k8s.run_name(RunSpec(name="My Run #1 (Llama 3)", devices=4))
    long = k8s.run_name(RunSpec(model="org/" + "x" * 120))
    for name in (a, b, long, k8s.run_name(RunSpec(name="42"))):
        assert len(name) <= 52
        assert name[0].isalpha() and name[-1].isalnum()
        assert all(c.isalnum() and c.islower() or c.isdigit() or c == "-" for c in name)
    assert a.startswith("my-run-1-llama-3-") and a != b
    assert k8s.run_name(RunSpec(devices=8)) == k8s.run_name(RunSpec(devices=8))


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(SpecError, match="image"):
        k8s.render(RunSpec(), image=" ")
    with pytest.raises(SpecError, match="namespace"):
        k8s.render(RunSpec(), image=IMAGE, namespace="Not_Valid")


def test_validate_rejects_a_misspelt_field(kube):
    manifests = k8s.render(RunSpec(devices=8), image=IMAGE)
    manifests[1]["spec"]["template"]["spec"]["containers"][0]["resourcez"] = {"limits": {}}
    with pytest.raises(SpecError, match="resourcez"):
        k8s.validate(manifests)


def test_validate_rejects_a_missing_required_field(kube):
    manifests = k8s.render(RunSpec(devices=8), image=IMAGE)
    del manifests[1]["spec"]["template"]["spec"]["containers"][0]["name"]
    with pytest.raises(SpecError, match="V1Job"):
        k8s.validate(manifests)


# --------------------------------------------------------------- several nodes --


def _check_replica_pods(kube, replicas: Dict[str, Any]) -> Dict[str, Any]:
    pods = {}
    for role, replica in replicas.items():
        template = _deserialize(kube, replica["template"], "V1PodTemplateSpec")
        assert kube.client.ApiClient().sanitize_for_serialization(template) == replica["template"]
        pods[role] = template.spec
    return pods


@pytest.mark.parametrize("launcher", ["auto", "deepspeed", "mpirun"])
def test_several_gaudi_nodes_are_an_mpi_job(kube, launcher):
    spec = RunSpec(devices=8, nodes=3, launcher=launcher)
    manifests = k8s.render(spec, image=IMAGE)
    job = _by_kind(manifests)["MPIJob"]
    assert job["apiVersion"] == "kubeflow.org/v2beta1"
    body = job["spec"]
    # Required by the MPI operator's CRD: the replica specs; the rest has defaults we set explicitly.
    assert set(body["mpiReplicaSpecs"]) == {"Launcher", "Worker"}
    assert body["slotsPerWorker"] == 8
    assert body["mpiReplicaSpecs"]["Launcher"]["replicas"] == 1
    assert body["mpiReplicaSpecs"]["Worker"]["replicas"] == 3
    assert body["runPolicy"]["cleanPodPolicy"] in ("None", "Running", "All")
    assert body["mpiImplementation"] == "OpenMPI"

    pods = _check_replica_pods(kube, body["mpiReplicaSpecs"])
    (worker,) = pods["Worker"].containers
    assert worker.resources.limits["habana.ai/gaudi"] == "8"
    assert "sshd" in " ".join(worker.command)
    (launcher_container,) = pods["Launcher"].containers
    assert "habana.ai/gaudi" not in launcher_container.resources.limits
    assert launcher_container.command[:2] == ["gaudi-nb", "train"]
    assert body["mpiReplicaSpecs"]["Launcher"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    k8s.validate(manifests)


def test_several_nodes_with_torchrun_are_a_pytorch_job(kube):
    manifests = k8s.render(RunSpec(devices=8, nodes=4, launcher="torchrun"), image=IMAGE)
    job = _by_kind(manifests)["PyTorchJob"]
    assert job["apiVersion"] == "kubeflow.org/v1"
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert set(replicas) == {"Master", "Worker"}
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 3
    assert job["spec"]["nprocPerNode"] == "8"
    pods = _check_replica_pods(kube, replicas)
    for pod in pods.values():
        (container,) = pod.containers
        assert container.name == "pytorch", "the training operator looks for a container named pytorch"
        assert container.resources.limits["habana.ai/gaudi"] == "8"
    k8s.validate(manifests)


def test_validate_checks_the_crds_required_fields(kube):
    manifests = k8s.render(RunSpec(devices=8, nodes=2), image=IMAGE)
    broken = json.loads(json.dumps(manifests))
    del broken[1]["spec"]["mpiReplicaSpecs"]["Worker"]
    with pytest.raises(SpecError, match="Worker"):
        k8s.validate(broken)
    broken = json.loads(json.dumps(manifests))
    broken[1]["spec"]["mpiReplicaSpecs"]["Launcher"]["replicas"] = 2
    with pytest.raises(SpecError, match="exactly 1"):
        k8s.validate(broken)
    torch_job = k8s.render(RunSpec(devices=8, nodes=2, launcher="torchrun"), image=IMAGE)
    torch_job[1]["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["name"] = "train"
    with pytest.raises(SpecError, match="pytorch"):
        k8s.validate(torch_job)


# ----------------------------------------------------------------------- YAML --


def test_yaml_is_one_stream_kubectl_reads_back_identically():
    manifests = k8s.render(RunSpec(devices=8, nodes=2), image=IMAGE)
    text = k8s.to_yaml(manifests)
    assert text.count("\n---\n") == 1
    assert list(yaml.safe_load_all(text)) == manifests
    assert "spec.json: |" in text


# ------------------------------------------------------------------------ CLI --


def test_cli_renders_checks_and_writes_a_file(kube, tmp_path):
    import typer
    from typer.testing import CliRunner

    from gaudi_nb.k8s_cli import k8s_app

    app = typer.Typer()
    app.add_typer(k8s_app, name="k8s")
    runner = CliRunner()
    out = tmp_path / "run.yaml"
    result = runner.invoke(
        app,
        ["k8s", "render", "--image", IMAGE, "--model", "tiny-llama", "--devices", "8", "--nodes", "2",
         "--max-steps", "20", "--namespace", "ml", "--output", str(out), "--check"],
    )
    assert result.exit_code == 0, result.output
    docs = list(yaml.safe_load_all(out.read_text()))
    assert [d["kind"] for d in docs] == ["ConfigMap", "MPIJob"]
    assert json.loads(docs[0]["data"]["spec.json"])["max_steps"] == 20
    assert all(d["metadata"]["namespace"] == "ml" for d in docs)

    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text("model: tiny-llama\ndevices: 2\nmax_steps: 7\n")
    result = runner.invoke(app, ["k8s", "render", "--image", IMAGE, "--spec-file", str(spec_file), "--max-steps", "9"])
    assert result.exit_code == 0, result.output
    docs = list(yaml.safe_load_all(result.stdout))
    assert json.loads(docs[0]["data"]["spec.json"])["max_steps"] == 9
    assert docs[1]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["habana.ai/gaudi"] == "2"


def test_cli_bad_option_is_one_line_and_exit_2():
    import typer
    from typer.testing import CliRunner

    from gaudi_nb.k8s_cli import k8s_app

    app = typer.Typer()
    app.add_typer(k8s_app, name="k8s")
    result = CliRunner().invoke(app, ["k8s", "render", "--image", IMAGE, "--devices", "0"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: devices")


def test_renderer_does_not_import_the_sdk():
    import subprocess
    import sys

    code = (
        "import sys; from gaudi_nb import k8s; from gaudi_nb.spec import RunSpec; "
        "k8s.to_yaml(k8s.render(RunSpec(devices=8, nodes=2), image='x:1')); "
        "assert 'kubernetes' not in sys.modules, 'render imported the SDK'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_validate_without_the_sdk_names_the_extra(monkeypatch):
    import sys

    from gaudi_nb.errors import MissingExtraError

    monkeypatch.setitem(sys.modules, "kubernetes", None)  # import now raises ImportError
    with pytest.raises(MissingExtraError, match=r"gaudi_nb\[k8s\]"):
        k8s.validate(k8s.render(RunSpec(), image=IMAGE))


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

    # PyTorchJob: the training operator sets each pod's node rank and the master
    pod = {"RANK": "1", "MASTER_ADDR": "job-master-0", "MASTER_PORT": "23456", "WORLD_SIZE": "2"}
    options = cluster_launch_options(pod, nodes=2)
    assert options == {"node_rank": 1, "master_addr": "job-master-0", "master_port": 23456}
    plan = build_launch(RunSpec(devices=2, nodes=2, launcher="torchrun"), ["-m", "gaudi_nb.worker"], accelerator="cpu", **options)
    assert "--node-rank" in plan.argv and plan.argv[plan.argv.index("--node-rank") + 1] == "1"
    assert any("job-master-0" in a for a in plan.argv) and any("23456" in a for a in plan.argv)
    assert cluster_launch_options({"RANK": "0"}, nodes=1) == {}  # a one-node run is not a cluster job
