"""--trainer lightning and Lightning --script runs: real torchrun, 2 CPU ranks, the events the other trainers write."""
import json
import subprocess
import time
from pathlib import Path

import pytest
from conftest import BIN, REPO

import gaudi_nb
from gaudi_nb.errors import GaudiNbError
from gaudi_nb.lightning import CHECKPOINT_FILE
from gaudi_nb.rundir import CHECKPOINT_COMPLETE
from gaudi_nb.worker import lightning_trainer
from gaudi_nb.worker.callback import RankProgress

GAUDI_NB = str(BIN / "gaudi-nb")
SCRIPT = REPO / "tests" / "fixtures" / "lightning_script.py"
# what transformers' callback writes in a step event: the Lightning one writes the same keys
STEP_KEYS = {"attempt", "step", "loss", "learning_rate", "grad_norm", "step_time_s", "tokens", "samples", "tokens_per_second", "samples_per_second", "warmup", "memory"}


def cli(*args, timeout=240):
    return subprocess.run([GAUDI_NB, *args], capture_output=True, text=True, timeout=timeout)


def steps_of(run, attempt=None):
    return [e for e in run.events(types=["step"]) if attempt is None or e["attempt"] == attempt]


# -- what the HPU branch chooses, pinned without a card -------------------------------------------
@pytest.mark.parametrize("accelerator, world_size, precision, expected", [
    ("hpu", 8, "bf16", ("hpu", "hpu_ddp", "bf16-mixed", True)),
    ("hpu", 1, "fp32", ("hpu", "hpu_single", "32-true", True)),
    ("cpu", 2, "fp32", ("cpu", "ddp", "32-true", False)),
    ("cpu", 1, "bf16", ("cpu", "auto", "bf16-mixed", False)),
    ("cuda", 4, "bf16", ("cuda", "ddp", "bf16-mixed", False)),
])
def test_the_accelerator_strategy_and_precision_follow_the_accelerator(accelerator, world_size, precision, expected):
    choice = lightning_trainer.choose(accelerator, world_size, precision)
    assert (choice.accelerator, choice.strategy, choice.precision, choice.needs_lightning_habana) == expected


def test_on_gaudi_the_lightning_trainer_says_it_runs_eager_without_compile():
    from gaudi_nb.worker.trainers import execution_mode

    assert execution_mode("hpu", False, "lightning") == "eager" and execution_mode("hpu", True, "lightning") == "lazy"
    assert execution_mode("hpu", False, "transformers") == "eager+compile"


def test_without_lightning_habana_gaudi_gets_one_line_naming_the_other_trainers():
    pytest.importorskip("lightning")
    with pytest.raises(GaudiNbError) as caught:
        lightning_trainer.trainer_devices(lightning_trainer.choose("hpu", 8, "bf16"), 8, 1)
    message = str(caught.value)
    assert "\n" not in message and "lightning-habana" in message and "2024" in message
    assert "--trainer optimum-habana" in message and "--trainer transformers" in message
    # the CPU path is the same call minus the device: plain names Lightning knows
    assert lightning_trainer.trainer_devices(lightning_trainer.choose("cpu", 2, "fp32"), 2, 1) == {
        "devices": 2, "num_nodes": 1, "accelerator": "cpu", "strategy": "ddp", "precision": "32-true"}


DEEPSPEED_NODE_1 = {"WORLD_SIZE": "16", "RANK": "9", "LOCAL_RANK": "1", "LOCAL_SIZE": "8", "CROSS_RANK": "1", "CROSS_SIZE": "2"}
LAUNCHER_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_SIZE", "CROSS_RANK", "CROSS_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                      "NODE_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE")


@pytest.mark.parametrize("environ, placement", [
    (DEEPSPEED_NODE_1, (8, 2, 1)),  # DeepSpeed's launcher (deepspeed/launcher/launch.py) sets no LOCAL_WORLD_SIZE nor GROUP_RANK
    ({"WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "8", "GROUP_RANK": "1"}, (8, 2, 1)),  # torchrun
    ({"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_SIZE": "4"}, (4, 1, 0)),  # mpirun, one node
    ({}, (1, 1, 0)),
])
def test_each_launchers_variables_give_the_ranks_per_node_and_the_nodes_rank(environ, placement):
    from gaudi_nb.worker.rank import node_placement

    assert node_placement(environ) == placement


def test_a_world_that_is_not_whole_nodes_is_one_line():
    from gaudi_nb.worker.rank import node_placement

    with pytest.raises(GaudiNbError) as caught:
        node_placement({"WORLD_SIZE": "12", "LOCAL_SIZE": "8", "CROSS_SIZE": "2", "CROSS_RANK": "0"})
    assert "\n" not in str(caught.value) and "same number of ranks" in str(caught.value)


def test_under_deepspeed_across_gaudi_nodes_lightning_gets_the_nodes_and_this_nodes_rank(monkeypatch, tmp_path):
    # 2 nodes × 8 cards: not devices=16 on one node with every node claiming node rank 0
    import os
    from types import SimpleNamespace

    for name in LAUNCHER_VARIABLES:
        monkeypatch.setenv(name, "")  # recorded, so that the NODE_RANK the run sets is undone after the test
        monkeypatch.delenv(name)
    for name, value in DEEPSPEED_NODE_1.items():
        monkeypatch.setenv(name, value)
    asked = {}

    class Built(Exception):
        pass

    def trainer_devices(choice, devices, num_nodes):
        asked.update(strategy=choice.strategy, devices=devices, num_nodes=num_nodes)
        raise Built

    monkeypatch.setattr(lightning_trainer, "trainer_devices", trainer_devices)
    run = lightning_trainer.LightningRun.__new__(lightning_trainer.LightningRun)
    run.inputs = SimpleNamespace(accelerator="hpu", precision="bf16")
    with pytest.raises(Built):
        run.train()
    assert asked == {"strategy": "hpu_ddp", "devices": 8, "num_nodes": 2}
    assert os.environ["NODE_RANK"] == "1"  # what Lightning's environment reads: its global ranks start at 8 here
    from lightning.fabric.plugins.environments import LightningEnvironment

    assert LightningEnvironment().node_rank() == 1


def test_both_trainers_callbacks_share_one_progress(tmp_path):
    from gaudi_nb.rundir import RunFolder

    folder = RunFolder(tmp_path)
    folder.control.mkdir()
    progress = RankProgress(None, folder, tokens_per_step=10, samples_per_step=1, warmup_steps=0, max_steps=5, memory_stats=dict, is_main=True)
    assert progress.step_ended(1) == (False, False) and progress.step_ended(5) == (True, False)
    folder.request_stop("budget_exceeded")
    assert progress.step_ended(2) == (False, False) and progress.stop_at == 4  # two steps on, every rank reads it
    assert progress.step_ended(4) == (True, True) and progress.stop_reason == "budget_exceeded"


# -- real runs ---------------------------------------------------------------------------
@pytest.mark.slow
def test_lightning_trains_on_two_cpu_ranks_with_the_same_events(gaudi_home):
    result = cli("train", "--trainer", "lightning", "--devices", "2", "--max-steps", "20", "--sequence-length", "64", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(result.stdout)
    assert record["status"] == "succeeded" and record["trainer"] == "lightning"
    assert record["accelerator"] == "cpu" and record["device_count"] == 2 and record["precision"] == "fp32"  # a CPU run says so
    run = gaudi_nb.get_run(record["run_id"])
    steps = steps_of(run)
    assert [e["step"] for e in steps] == list(range(1, 21))  # every step once
    assert all(set(e) >= STEP_KEYS for e in steps) and steps[-1]["tokens"] == 4 * 64 * 2
    assert steps[0]["learning_rate"] == pytest.approx(3e-4) and steps[0]["grad_norm"] > 0  # the rate step 1 used, as transformers logs it
    assert record["metrics"]["final_loss"] < record["metrics"]["first_loss"] - 0.5
    assert record["metrics"]["tokens_per_second"] > 0 and record["metrics"]["tokens_seen"] == 20 * 4 * 64 * 2
    assert record["telemetry_samples"] > 0 and record["cost"]["elapsed_s"] > 0 and record["cost"]["usd"] is None  # no price: unknown
    final = record["checkpoints"][-1]
    assert final["reason"] == "final" and final["step"] == 20
    assert (Path(final["path"]) / CHECKPOINT_FILE).is_file() and (Path(final["path"]) / CHECKPOINT_COMPLETE).is_file()
    log = (Path(record["run_dir"]) / "logs" / "train.log").read_text()
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in log  # Lightning joined torchrun's two ranks; it started no process of its own

    # the panel shows it as it shows any trainer's run
    from gaudi_nb.notebook.panel import PanelState, header_html, loss_chart, metrics_html

    state = PanelState.from_events(record["run_id"], run.events())
    assert 'data-status="succeeded"' in header_html(state) and "lightning" in header_html(state)
    assert 'data-points="20"' in loss_chart(state) and "tokens/s" in metrics_html(state)


@pytest.mark.slow
def test_a_stopped_lightning_run_resumes_from_its_checkpoint(gaudi_home):
    # one rank, twice launched: Lightning's own resume is the point here; that every rank stops at one agreed step is
    # RankProgress's (test_both_trainers_callbacks_share_one_progress) and test_multinode's budget stop
    run = gaudi_nb.train(trainer="lightning", devices=1, max_steps=400, sequence_length=64)
    deadline = time.monotonic() + 180
    while not steps_of(run):  # stopped after its first step: the stop lands two steps on
        assert time.monotonic() < deadline and not run.record()["ended_at"], run.record()["exit"]
        time.sleep(0.2)
    run.stop()
    run.wait(timeout=180)
    record = run.record()
    (asked,) = run.events(types=["stop_requested"])
    stopped_at = record["checkpoints"][-1]["step"]
    assert record["status"] == "stopped" and record["checkpoints"][-1]["reason"] == "stopped"
    assert record["steps_completed"] == stopped_at < 400  # stopped after the step it saved
    assert (Path(record["checkpoints"][-1]["path"]) / CHECKPOINT_FILE).is_file()

    result = cli("resume", run.run_id, "--max-steps", str(stopped_at + 4))
    assert result.returncode == 0, result.stderr[-3000:]
    record = run.record()
    assert record["status"] == "succeeded" and record["attempt"] == 2
    assert [e["step"] for e in steps_of(run, attempt=2)] == list(range(stopped_at + 1, stopped_at + 5))  # Lightning went on from the checkpoint
    assert record["checkpoints"][-1]["step"] == stopped_at + 4


@pytest.mark.slow
def test_a_lightning_script_gets_gaudi_nbs_callback(gaudi_home):
    result = cli("train", "--script", str(SCRIPT), "--devices", "2", "--max-steps", "12", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(result.stdout)
    assert record["status"] == "succeeded" and record["steps_completed"] == 12
    run = gaudi_nb.get_run(record["run_id"])
    steps = steps_of(run)
    assert [e["step"] for e in steps] == list(range(1, 13))
    assert steps[0]["samples"] == 16 and steps[0]["tokens"] is None  # 8 rows × 2 ranks, read from the batch; no token ids in it
    assert record["metrics"]["final_loss"] < record["metrics"]["first_loss"]
    assert record["checkpoints"][-1]["reason"] == "final" and (Path(record["checkpoints"][-1]["path"]) / CHECKPOINT_COMPLETE).is_file()
    log = (Path(record["run_dir"]) / "logs" / "train.log").read_text()
    assert log.count("gaudi_nb callback added once") == 2  # on both ranks


def test_the_public_callback_is_one_import():
    import lightning

    from gaudi_nb.lightning import GaudiNbCallback

    assert issubclass(GaudiNbCallback, lightning.pytorch.Callback)


def test_outside_a_run_the_callback_does_nothing(monkeypatch, tmp_path):
    import lightning as L
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from gaudi_nb.lightning import GaudiNbCallback

    monkeypatch.delenv("GAUDI_NB_RUN_DIR", raising=False)
    monkeypatch.chdir(tmp_path)

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[GaudiNbCallback()])
    trainer.fit(Tiny(), DataLoader(TensorDataset(torch.randn(32, 4)), batch_size=4))
    assert trainer.global_step == 3 and not list(tmp_path.iterdir())  # the same script runs with plain python, and writes nothing of gaudi_nb's
