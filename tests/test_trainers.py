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


def test_auto_on_gaudi_picks_transformers_trainer_the_supported_stack(tmp_path, monkeypatch):
    # optimum-habana is installed here: auto still leaves it (past end of support); asking for it by name still works
    from gaudi_nb.gaudi_stack import trainer_support

    assert trainers.pick_trainer("auto", "hpu") == "transformers" and trainers.pick_trainer("optimum-habana", "hpu") == "optimum-habana"
    assert "past end of support" in trainer_support("optimum-habana") and "fused AdamW" in trainer_support("optimum-habana")
    assert "past end of support" not in trainer_support("transformers")
    calls = []
    monkeypatch.setattr(worker_main.accel_room, "detect", lambda: FakeHPU())
    monkeypatch.setattr(compat, "adapt_transformers_to_gaudi", lambda: calls.append("adapt"))
    monkeypatch.setattr(worker_main, "build_model_and_tokenizer", lambda spec, texts: (calls.append("build"), (_ for _ in ()).throw(Built))[1])
    with pytest.raises(Built):
        worker_main.train(run_folder(tmp_path, trainer="auto"))
    assert calls == ["build"]  # transformers' Trainer: nothing of optimum-habana's is applied


def test_gaudi_nb_show_says_a_gaudi_trainer_run_used_a_stack_past_end_of_support():
    from gaudi_nb.cli import accelerator_line
    from gaudi_nb.gaudi_stack import trainer_support

    record = {"accelerator": "hpu", "device_count": 8, "precision": "bf16", "trainer": "optimum-habana", "execution_mode": "eager+compile",
              "trainer_support": trainer_support("optimum-habana")}
    assert accelerator_line(record) == ("hpu × 8 (bf16, optimum-habana, eager+compile) · optimum-habana 1.21.2 is past end of support "
                                        "(its final release; support ended 2026-10-31, Gaudi software 1.24, transformers 4.55.x)")
    supported = dict(record, trainer="transformers", trainer_support=trainer_support("transformers"))
    assert accelerator_line(supported) == "hpu × 8 (bf16, transformers, eager+compile)"


def fake_htcore(monkeypatch):
    import sys
    import types

    marks = []
    core = types.ModuleType("habana_frameworks.torch.core")
    core.mark_step = lambda: marks.append("mark_step")
    for name in ("habana_frameworks", "habana_frameworks.torch"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "habana_frameworks.torch.core", core)
    return marks


def test_lazy_mode_with_transformers_trainer_marks_each_step_after_backward_and_after_the_optimizer(monkeypatch, tmp_path):
    import torch
    from transformers import Trainer, TrainingArguments

    from gaudi_nb.worker.callback import LazyModeMarkStep

    marks = []  # habana's mark_step stands in below (test_the_mark_step_is_habanas_own pins that it is called)
    assert not any(isinstance(c, LazyModeMarkStep) for c in trainers.transformers_callbacks(inputs("hpu")))  # eager needs none
    assert not any(isinstance(c, LazyModeMarkStep) for c in trainers.transformers_callbacks(inputs("cpu", lazy_mode=True)))
    callbacks = trainers.transformers_callbacks(inputs("hpu", lazy_mode=True))
    assert isinstance(callbacks[0], LazyModeMarkStep)

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(2))

        def forward(self, x, labels=None):
            return {"loss": (self.weight * x).sum()}

    order = []

    class Step(torch.optim.SGD):
        def step(self, closure=None):
            order.append("optimizer")
            return super().step(closure)

    model = Tiny()
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=1, use_cpu=True, report_to=[],
                             disable_tqdm=True, save_strategy="no", logging_strategy="no")
    marks_in_order = []
    monkeypatch.setattr(callbacks[0], "_mark_step", lambda: marks_in_order.append(f"mark after {order[-1] if order else 'backward'}") or marks.append(1))
    trainer = Trainer(model=model, args=args, train_dataset=[{"x": torch.ones(2)}] * 3, callbacks=callbacks,
                      optimizers=(Step(model.parameters(), lr=0.1), None))
    order.clear()
    trainer.train()
    assert len(marks) == 6 and order == ["optimizer"] * 3  # two mark_steps per optimizer step, the Trainer's own hooks
    assert marks_in_order[:2] == ["mark after backward", "mark after optimizer"]


def test_the_mark_step_is_habanas_own(monkeypatch):
    from gaudi_nb.worker.callback import LazyModeMarkStep

    marks = fake_htcore(monkeypatch)
    LazyModeMarkStep().on_pre_optimizer_step(None, None, None)
    LazyModeMarkStep().on_optimizer_step(None, None, None)
    assert marks == ["mark_step", "mark_step"]


def test_pyproject_requires_the_accelerate_transformers_needs_to_see_a_gaudi_card():
    # transformers' is_torch_hpu_available() returns False below this accelerate (its torch_hpu_min_accelerate_version):
    # the Trainer would then train on CPU without a word
    import re
    from pathlib import Path

    import tomllib
    import transformers.utils.import_utils as import_utils
    from packaging.requirements import Requirement
    from packaging.version import Version

    needed = Version(re.search(r'torch_hpu_min_accelerate_version = "([\d.]+)"', inspect.getsource(import_utils)).group(1))
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    accelerate = next(Requirement(r) for r in project["dependencies"] if r.startswith("accelerate"))
    assert needed == Version("1.5.0") and not accelerate.specifier.contains("1.4.0") and accelerate.specifier.contains("1.5.0")
    extra = project["optional-dependencies"]["optimum-habana"]
    assert "optimum-habana==1.21.2" in extra and "optimum-habana==1.21.2" not in project["optional-dependencies"]["habana"]
