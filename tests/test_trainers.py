"""The HPU branch of the trainers, pinned with the real functions where only a Gaudi card could run them."""
import inspect
import json

import pytest

from gaudi_nb.spec import RunSpec
from gaudi_nb.worker import compat, trainers
from gaudi_nb.worker import main as worker_main
from gaudi_nb.worker.trainers import TrainerInputs


class FakeHPU:
    """Only what the worker asks of an accelerator before it builds a model: there is no card here."""

    name = "hpu"

    def default_precision(self):
        return "bf16"

    def device_string(self, local_rank):
        return "hpu"

    def memory_stats(self):
        return {}


class Built(Exception):
    pass


def run_folder(tmp_path, **spec):
    (tmp_path / "run.json").write_text(json.dumps({"run_id": "r", "node": "local"}))
    (tmp_path / "spec.json").write_text(RunSpec(**spec).model_dump_json())
    (tmp_path / "control").mkdir()
    return tmp_path


@pytest.mark.parametrize("trainer, adapted", [("optimum-habana", True), ("transformers", False)])
def test_on_hpu_transformers_is_adapted_to_gaudi_before_any_model_is_built(tmp_path, monkeypatch, trainer, adapted):
    calls = []
    monkeypatch.setattr(worker_main.accel_room, "detect", lambda: FakeHPU())
    monkeypatch.setattr(compat, "adapt_transformers_to_gaudi", lambda: calls.append("adapt"))

    def build(spec, texts):
        calls.append("build")
        raise Built

    monkeypatch.setattr(worker_main, "build_model_and_tokenizer", build)
    with pytest.raises(Built):
        worker_main.train(run_folder(tmp_path, trainer=trainer))
    assert calls == (["adapt", "build"] if adapted else ["build"])


def test_off_hpu_nothing_is_adapted(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(compat, "adapt_transformers_to_gaudi", lambda: calls.append("adapt"))
    trainers.prepare_transformers("optimum-habana", "cpu")
    assert calls == []


def test_the_adaptation_is_optimum_habanas_own_and_needs_the_gaudi_stack():
    # Off Gaudi its imports fail on habana_frameworks: the reason the CPU path sets the flags itself.
    with pytest.raises(ImportError, match="habana_frameworks"):
        compat.adapt_transformers_to_gaudi()


def inputs(accelerator, lazy_mode=False, precision="bf16"):
    return TrainerInputs(model=None, train_dataset=None, eval_dataset=None, output_dir="/tmp/x", accelerator=accelerator, precision=precision,
                         batch_size=4, max_steps=10, learning_rate=3e-4, seed=1, warmup_steps=2, lazy_mode=lazy_mode, eval_steps=None, save_steps=None, callbacks=[])


def test_eager_mode_with_torch_compile_is_the_hpu_default():
    assert RunSpec().lazy_mode is False
    args = trainers.optimum_habana_arguments(inputs("hpu"))
    assert args["use_habana"] is True and args["use_lazy_mode"] is False
    assert args["torch_compile"] is True and args["torch_compile_backend"] == "hpu_backend"
    assert args["bf16"] is False and "ddp_backend" not in args  # bf16 from GaudiConfig's autocast; HCCL picked by optimum-habana
    assert trainers.execution_mode("hpu", False) == "eager+compile"


def test_lazy_mode_stays_an_option():
    args = trainers.optimum_habana_arguments(inputs("hpu", lazy_mode=True))
    assert args["use_lazy_mode"] is True and "torch_compile" not in args
    assert trainers.execution_mode("hpu", True) == "lazy"


def test_off_hpu_runs_eager_without_compile():
    args = trainers.optimum_habana_arguments(inputs("cpu", precision="fp32"))
    assert args["use_habana"] is False and args["use_lazy_mode"] is False and "torch_compile" not in args
    assert trainers.execution_mode("cpu", True) == "eager"


def test_every_argument_is_one_gaudi_training_arguments_takes():
    oh = compat.import_optimum_habana()
    accepted = set(inspect.signature(oh.GaudiTrainingArguments).parameters)
    for case in (inputs("hpu"), inputs("hpu", lazy_mode=True), inputs("cpu", precision="fp32")):
        assert set(trainers.optimum_habana_arguments(case)) <= accepted


def test_plain_trainer_on_hpu_compiles_with_the_hpu_backend_too():
    from transformers import TrainingArguments

    args = {**trainers._common_arguments(inputs("hpu")), **trainers._hpu_mode_arguments(inputs("hpu"))}
    assert args["torch_compile_backend"] == "hpu_backend" and set(args) <= set(inspect.signature(TrainingArguments).parameters)
