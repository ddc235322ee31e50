"""--report-to: a real MLflow server on loopback and W&B offline files hold the run's metrics (dollars included); an unreachable tracker warns once and the run goes on."""
from __future__ import annotations

import glob
import json
import os
import struct
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
from conftest import BIN, free_port, wait_for, wait_for_http

GAUDI_NB = str(BIN / "gaudi-nb")
# what gaudi_nb logs besides the step metrics: dollars, dollars per million tokens, TFLOP/s
OWN_METRICS = {"usd", "usd_per_million_tokens", "tokens_per_second_mean", "tflops", "tokens_seen"}
STEP_METRICS = {"loss", "learning_rate", "grad_norm", "tokens_per_second", "eval_loss"}


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    # without MLflow's job runner: its eight huey consumers each import mlflow (about as much CPU as the server's own start),
    # and no test here runs an MLflow job
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{folder}/mlflow.db", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=folder, stdout=open(folder / "server.log", "w"), stderr=subprocess.STDOUT, env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    url = f"http://127.0.0.1:{port}"
    wait_for_http(f"{url}/health", server, folder / "server.log", "mlflow server", timeout=180)  # its migrations, on a busy machine
    yield url
    server.terminate()
    server.wait(timeout=30)


def train(home: Path, env: Dict[str, str], *args: str) -> Dict[str, Any]:
    environment = {**os.environ, "GAUDI_NB_HOME": str(home), "WANDB_SILENT": "true", **env}
    environment.pop("GAUDI_NB_STORE_URL", None)
    started = time.monotonic()
    result = subprocess.run([GAUDI_NB, "train", "--json", *args], capture_output=True, text=True, timeout=240, env=environment, cwd=home.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(result.stdout)
    record["_wall_s"] = time.monotonic() - started
    return record


def agent_gone(record: Dict[str, Any]) -> None:
    """The run's agent has exited: `train` and `resume` return at run_end, and the agent closes its trackers after it."""
    from gaudi_nb.agent.liveness import agent_alive
    from gaudi_nb.rundir import RunFolder

    wait_for(lambda: not agent_alive(RunFolder(Path(record["run_dir"]))), timeout=120, what="the agent to close its trackers and exit")


def events(record: Dict[str, Any]) -> List[Dict[str, Any]]:
    return [json.loads(line) for line in Path(record["run_dir"], "events.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tracked_run(mlflow_server, tmp_path_factory):
    """One run reporting to both trackers: the MLflow server, and W&B offline beside the run."""
    home = tmp_path_factory.mktemp("tracked") / "home"
    # a user and password in the URI (the server has no login: it ignores them) must never be written down
    with_login = mlflow_server.replace("http://", "http://ada:" + "pw" + "Secr3t@")
    env = {"MLFLOW_TRACKING_URI": with_login, "MLFLOW_EXPERIMENT_NAME": "gaudi-nb-tests", "WANDB_MODE": "offline", "WANDB_PROJECT": "gaudi-nb-tests"}
    return train(home, env, "--max-steps", "8", "--sequence-length", "64", "--eval-steps", "4", "--price-per-hour", "12", "--report-to", "mlflow,wandb",
                 "--report-checkpoint", "--name", "tracked")


@pytest.mark.slow  # real training or a batch notebook, logged to a live MLflow server
def test_the_mlflow_server_holds_the_run_its_metrics_and_dollars(mlflow_server, tracked_run):
    from mlflow.tracking import MlflowClient

    assert tracked_run["status"] == "succeeded"
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("gaudi-nb-tests")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`gaudi_nb.run_id` = '{tracked_run['run_id']}'")
    assert len(runs) == 1  # one tracker run per gaudi_nb run
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "tracked"
    assert STEP_METRICS | OWN_METRICS <= set(run.data.metrics), sorted(run.data.metrics)
    assert run.data.metrics["usd"] > 0 and run.data.metrics["usd"] == pytest.approx(tracked_run["cost"]["usd"], rel=0.2)
    assert run.data.metrics["usd_per_million_tokens"] > 0
    assert any(key.startswith("utilization_pct/device_") for key in run.data.metrics)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == list(range(1, 9))
    assert run.data.params["max_steps"] == "8" and run.data.params["report_to"] == "mlflow,wandb"
    assert run.data.tags["gaudi_nb.price_source"] == tracked_run["cost"]["price_source"]
    assert run.data.tags["gaudi_nb.accelerator"] == "cpu" and run.data.tags["gaudi_nb.peak_source"].startswith("unknown")
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")]
    assert "checkpoint/model.safetensors" in artifacts  # the final checkpoint, small enough to upload
    # and the way back: the gaudi_nb record names the MLflow run and its page
    linked = tracked_run["trackers"]["mlflow"]
    assert linked["tracker_run_id"] == run.info.run_id and linked["url"].startswith(mlflow_server)
    assert "pwSecr3t" not in json.dumps(tracked_run) and "pwSecr3t" not in Path(tracked_run["run_dir"], "events.jsonl").read_text()


def test_a_tracking_uri_is_written_down_without_its_login_and_checkpoints_upload_only_when_asked():
    from gaudi_nb.agent.tracker_backends import without_credentials
    from gaudi_nb.errors import SpecError
    from gaudi_nb.spec import RunSpec

    assert without_credentials("https://ada:pw@mlflow.example:5000/x?y=1") == "https://mlflow.example:5000/x?y=1"
    assert without_credentials("postgresql://u:p@db/mlflow") == "postgresql://db/mlflow"
    assert without_credentials("sqlite:///tmp/mlflow.db") == "sqlite:///tmp/mlflow.db"
    assert RunSpec().report_checkpoint is False
    with pytest.raises(SpecError, match="--report-checkpoint uploads the final checkpoint to a tracker: add --report-to"):
        RunSpec.from_options(report_checkpoint=True)


def wandb_records(path: str) -> Iterator[bytes]:
    """The records of a W&B transaction log (.wandb): LevelDB's log format (32 KiB blocks, 7-byte
    record headers: crc32, length, type) after a 7-byte ':W&B' header. wandb 0.31 ships no Python reader."""
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", data[:7]
    position, block, pending = 7, 32768, b""
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:
            position += left  # a block's tail too short for a header is padding
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if length == 0 and kind == 0:
            position += left
            continue
        chunk = data[position + 7:position + 7 + length]
        position += 7 + length
        if kind == 1:  # full
            yield chunk
        elif kind == 2:  # first
            pending = chunk
        elif kind == 3:  # middle
            pending += chunk
        elif kind == 4:  # last
            yield pending + chunk
            pending = b""


@pytest.mark.slow  # real training or a batch notebook, logged to a live MLflow server
def test_wandb_offline_history_holds_the_same_metrics(tracked_run):
    from wandb.proto import wandb_internal_pb2

    files = glob.glob(str(Path(tracked_run["run_dir"]) / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(files) == 1, files
    history: List[Dict[str, Any]] = []
    config: Dict[str, Any] = {}
    for raw in wandb_records(files[0]):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
        elif record.WhichOneof("record_type") == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
    keys = set().union(*history)
    assert STEP_METRICS | OWN_METRICS <= keys, sorted(keys)
    assert [row["loss"] for row in history if "loss" in row][-1] == pytest.approx(tracked_run["metrics"]["final_loss"])
    assert max(row.get("usd", 0) for row in history) > 0
    assert config["gaudi_nb.run_id"] == tracked_run["run_id"] and config["max_steps"] == 8
    assert tracked_run["trackers"]["wandb"]["tracker_run_id"] in files[0]


@pytest.mark.slow  # real training or a batch notebook, logged to a live MLflow server
def test_an_unreachable_tracker_warns_once_and_the_run_goes_on(tracked_run, tmp_path):
    """The trackers live in the agent, so a torch-free loop (tests/scriptrun.py) shows the warning and the run going on;
    that it is not slowed is measured against the real run with two live trackers, which takes longer to train."""
    import scriptrun

    loop = scriptrun.write_loop(tmp_path)
    record = train(tmp_path / "home", {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "GAUDI_NB_ACCELERATOR": "cpu"},
                   "--script", str(loop), "--max-steps", "8", "--price-per-hour", "12", "--report-to", "mlflow")
    assert record["status"] == "succeeded" and record["steps_completed"] == 8
    warnings = [e for e in events(record) if e["type"] == "log" and e.get("tracker") == "mlflow"]
    assert len(warnings) == 1, warnings
    assert warnings[0]["level"] == "warning" and "this run is not logged to mlflow" in warnings[0]["message"]
    print(f"unreachable MLflow: {record['_wall_s']:.1f} s; two live trackers: {tracked_run['_wall_s']:.1f} s; warning: {warnings[0]['message'][:200]}")
    assert "mlflow" not in record["trackers"]
    # not slowed: no slower than the same run with two live trackers, give or take a busy machine
    assert record["_wall_s"] < tracked_run["_wall_s"] * 1.5 + 15, (record["_wall_s"], tracked_run["_wall_s"])


def test_an_unknown_tracker_is_one_line_exit_2(tmp_path):
    result = subprocess.run([GAUDI_NB, "train", "--report-to", "mlflow,neptune"], capture_output=True, text=True, timeout=60, env={**os.environ, "GAUDI_NB_HOME": str(tmp_path)})
    assert result.returncode == 2
    assert "unknown tracker 'neptune': use mlflow, wandb" in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow  # real training or a batch notebook, logged to a live MLflow server
def test_a_notebook_run_logs_its_results_and_its_manifest(mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    home = tmp_path / "home"
    environment = {**os.environ, "GAUDI_NB_HOME": str(home), "MLFLOW_TRACKING_URI": mlflow_server, "MLFLOW_EXPERIMENT_NAME": "gaudi-nb-notebooks"}
    environment.pop("GAUDI_NB_STORE_URL", None)
    notebook = Path(__file__).parent / "fixtures" / "notebooks" / "good.ipynb"
    result = subprocess.run([GAUDI_NB, "batch", str(notebook), "-p", "learning_rate", "0.002", "--report-to", "mlflow", "--json"],
                            capture_output=True, text=True, timeout=180, env=environment, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(result.stdout)
    record = record[0] if isinstance(record, list) else record
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("gaudi-nb-notebooks")
    [run] = client.search_runs([experiment.experiment_id], filter_string=f"tags.`gaudi_nb.run_id` = '{record['run_id']}'")
    assert run.data.metrics["epochs"] == 2 and run.data.metrics["final_loss"] == pytest.approx(record["batch"]["results"]["final_loss"])
    assert "learning_rate" in run.data.params["parameters"]
    assert [a.path for a in client.list_artifacts(run.info.run_id, "batch_manifest")] == ["batch_manifest/manifest.json"]
    assert record["trackers"]["mlflow"]["tracker_run_id"] == run.info.run_id


def test_a_notebook_run_with_an_unknown_tracker_is_one_line_exit_2(tmp_path):
    notebook = Path(__file__).parent / "fixtures" / "notebooks" / "good.ipynb"
    result = subprocess.run([GAUDI_NB, "batch", str(notebook), "--report-to", "comet"], capture_output=True, text=True, timeout=60, env={**os.environ, "GAUDI_NB_HOME": str(tmp_path)})
    assert result.returncode == 2 and "unknown tracker 'comet'" in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.slow  # logged to a live MLflow server
def test_a_resumed_run_goes_on_in_the_same_tracker_run(mlflow_server, tmp_path):
    """The trackers live in the agent, so a torch-free loop (tests/scriptrun.py) resumes as any run does; that a LoRA run
    resumes from its adapter-only checkpoint is test_lora's."""
    import scriptrun
    from mlflow.tracking import MlflowClient

    home = tmp_path / "home"
    env = {"MLFLOW_TRACKING_URI": mlflow_server, "MLFLOW_EXPERIMENT_NAME": "gaudi-nb-resume", "GAUDI_NB_ACCELERATOR": "cpu"}
    first = train(home, env, "--script", str(scriptrun.write_loop(tmp_path)), "--max-steps", "4", "--report-to", "mlflow")
    assert first["status"] == "succeeded" and first["steps_completed"] == 4
    environment = {**os.environ, "GAUDI_NB_HOME": str(home), **env}
    environment.pop("GAUDI_NB_STORE_URL", None)
    result = subprocess.run([GAUDI_NB, "resume", first["run_id"], "--max-steps", "6", "--json"], capture_output=True, text=True, timeout=240, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(result.stdout)
    assert record["status"] == "succeeded" and record["attempt"] == 2 and record["steps_completed"] == 6
    agent_gone(record)  # its tracker thread has logged the last steps and closed the MLflow run
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("gaudi-nb-resume")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`gaudi_nb.run_id` = '{first['run_id']}'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "loss")] == [1, 2, 3, 4, 5, 6]  # each step once
    # each attempt's agent opened the same MLflow run (the loop ends before a tracker thread, niced, links its run:
    # the link is in the events, after run_end, not in the record the first `train` printed)
    linked = [e["tracker_run_id"] for e in events(record) if e["type"] == "tracker"]
    assert linked == [runs[0].info.run_id] * 2 and record["trackers"]["mlflow"]["tracker_run_id"] == linked[0], linked


def test_a_node_gets_the_settings_of_the_trackers_named_and_every_one_is_documented():
    from gaudi_nb.agent.tracker_backends import SETTINGS, settings_for

    environ = {"MLFLOW_TRACKING_URI": "http://mlflow:5000", "WANDB_PROJECT": "p", "WANDB_DIR": "/home/me/wandb", "HF_TOKEN": "secret", "WANDB_ENTITY": ""}
    assert settings_for(["wandb"], environ) == {"WANDB_PROJECT": "p"}  # not a folder of the client's, not an empty value, not another tool's key
    assert settings_for(["mlflow", "wandb"], environ) == {"MLFLOW_TRACKING_URI": "http://mlflow:5000", "WANDB_PROJECT": "p"}
    assert settings_for([], environ) == {}
    documented = (Path(__file__).parent.parent / "docs" / "training.md").read_text()
    assert [key for keys in SETTINGS.values() for key in keys if f"`{key}`" not in documented] == []
