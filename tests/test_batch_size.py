"""--batch-size auto (the search, the cache, real CPU runs) and --lr-scaling."""
import gc
import json
import subprocess

import psutil
import pytest
from conftest import BIN

import gaudi_nb
from gaudi_nb.errors import SpecError
from gaudi_nb.notebook.panel import batch_text
from gaudi_nb.spec import RunSpec
from gaudi_nb.worker import batch_size
from gaudi_nb.worker.batch_size import Trial, is_out_of_memory, search

GAUDI_NB = str(BIN / "gaudi-nb")


# -- the search, with a fake device --------------------------------------------------------
def fits_up_to(largest, asked):
    def fits(size):
        asked.append(size)
        return size <= largest

    return fits


def test_doubles_until_it_does_not_fit_then_bisects_and_keeps_a_margin():
    asked = []
    result = search(fits_up_to(37, asked), limit=1000)
    assert asked == [1, 2, 4, 8, 16, 32, 64, 48, 40, 36, 38, 37]
    assert result.largest_fit == 37 and result.size == 34 and not result.capped  # 10% kept back
    assert [t.fits for t in result.trials] == [s <= 37 for s in asked]


@pytest.mark.parametrize("largest, expected", [(1, 1), (2, 2), (9, 9), (10, 9), (64, 58), (100, 90)])
def test_the_margin_never_halves_a_small_batch(largest, expected):
    assert search(fits_up_to(largest, []), limit=4096).size == expected


def test_nothing_fits_and_the_limit():
    assert search(fits_up_to(0, []), limit=64).size == 0
    asked = []
    capped = search(fits_up_to(10_000, asked), limit=20)
    assert asked == [1, 2, 4, 8, 16, 20] and capped.capped and capped.largest_fit == 20 and capped.size == 18


def test_a_trial_says_why_a_size_did_not_fit():
    result = search(lambda n: Trial(n, n <= 3, peak_bytes=n * 100, why=None if n <= 3 else "over the memory fraction"), limit=64)
    assert result.largest_fit == 3 and [t.why for t in result.trials if not t.fits] == ["over the memory fraction"]


@pytest.mark.parametrize("error, oom", [
    (RuntimeError("[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't allocate memory: you tried to allocate 1099511627776 bytes."), True),
    (RuntimeError("FATAL ERROR :: MODULE:PT_DEVMEM Allocation failed for size::1073741824 (1024)MB"), True),
    (RuntimeError("synStatus=26 [Generic failure] PT_DEVMEM Allocation failed"), True),
    (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
    # Gaudi's graph-workspace form (Model-References #10, #13)
    (RuntimeError("FATAL ERROR :: MODULE:SYNHELPER workspace Allocation of size ::12884901888 failed"), True),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), False),
    (ValueError("out of memory"), False),
])
def test_out_of_memory_is_recognised_on_cpu_cuda_and_gaudi(error, oom):
    assert is_out_of_memory(error) is oom


def test_a_real_cpu_allocation_failure_is_out_of_memory():
    import torch

    with pytest.raises(RuntimeError) as caught:
        torch.empty(1 << 62, dtype=torch.uint8)
    assert is_out_of_memory(caught.value)


def test_the_cache_is_keyed_by_what_changes_the_answer(gaudi_home):
    key = batch_size.cache_key(model="tiny-llama", sequence_length=64, accelerator="cpu", device_memory=1 << 34, precision="fp32", trainer="transformers", memory_fraction=0.9)
    other = batch_size.cache_key(model="tiny-llama", sequence_length=128, accelerator="cpu", device_memory=1 << 34, precision="fp32", trainer="transformers", memory_fraction=0.9)
    assert batch_size.cached_size(key) is None
    batch_size.remember_size(key, {"size": 12})
    assert batch_size.cached_size(key)["size"] == 12 and batch_size.cached_size(other) is None
    assert batch_size.cache_path().parent.parent == gaudi_home


def test_the_key_says_which_program_and_world_the_size_was_measured_for():
    spec = RunSpec(model="tiny-llama", sequence_length=64)
    eager = batch_size.trial_program("hpu", False, "transformers")
    lazy = batch_size.trial_program("hpu", True, "transformers")
    fused = batch_size.trial_program("hpu", False, "optimum-habana")
    # transformers' Trainer builds torch's fused AdamW (its default optim with torch >= 2.8), GaudiTrainer habana's FusedAdamW
    assert (eager.execution_mode, eager.compile_backend, eager.optimizer) == ("eager+compile", "hpu_backend", "torch AdamW fused")
    assert (lazy.execution_mode, lazy.compile_backend) == ("lazy", None) and fused.optimizer == "habana FusedAdamW"
    assert batch_size.trial_program("cpu", True, "optimum-habana") == batch_size.TrialProgram("eager", "torch AdamW fused")
    assert batch_size.trial_program("hpu", False, "lightning") == batch_size.TrialProgram("eager", "torch AdamW")

    def key(program, world):
        return batch_size.run_cache_key(spec, "hpu", 96 << 30, "bf16", "transformers", program, world)

    assert len({key(eager, 8), key(lazy, 8), key(fused, 8), key(eager, 16)}) == 4


@pytest.fixture
def settled_heap():
    """trial_steps freezes what the process holds (its trials' gc.collect() then skips torch, transformers and what
    earlier tests left, half a second a trial otherwise) until the search's release(); a test that calls the trials
    without release() unfreezes here."""
    yield
    gc.unfreeze()


class FakeHPU:
    """The accelerator a rank sees on a Gaudi node, its device the CPU (there is no card here)."""

    name = "hpu"

    def device_string(self, local_rank):
        return "cpu"

    def mark_step(self):
        pass


class TinyLM:
    """Enough of a causal LM for the trials; sizes from `oom_from` on fail with Gaudi's graph-workspace message."""

    def __init__(self, oom_from):
        import torch

        self.torch, self.oom_from = torch, oom_from
        self.layer = torch.nn.Embedding(32, 32)
        self.config = type("Config", (), {"vocab_size": 32})()

    def to(self, device):
        return self

    def train(self):
        return self

    def parameters(self):
        return self.layer.parameters()

    def __call__(self, input_ids, labels):
        if input_ids.shape[0] >= self.oom_from:
            raise RuntimeError("FATAL ERROR :: MODULE:SYNHELPER workspace Allocation of size ::12884901888 failed")
        return type("Out", (), {"loss": self.layer(input_ids).float().pow(2).mean()})()


def fake_gaudi_stack(monkeypatch):
    """habana_frameworks as a rank imports it for the trials (its memory limit, FusedAdamW), and torch.hpu's peak."""
    import sys
    import types

    import torch

    made = {"optimizers": [], "compiled": []}
    plain = torch.optim.AdamW.__init__

    def adamw(self, params, lr, fused=None, **kwargs):
        made["optimizers"].append("torch AdamW fused" if fused else "torch AdamW")
        plain(self, params, lr=lr, fused=fused, **kwargs)

    class FusedAdamW(torch.optim.Adam):  # habana's: its own class, not torch's AdamW
        def __init__(self, params, lr):
            made["optimizers"].append("habana FusedAdamW")
            super().__init__(params, lr=lr)

    monkeypatch.setattr(torch.optim.AdamW, "__init__", adamw)

    modules = {name: types.ModuleType(name) for name in (
        "habana_frameworks", "habana_frameworks.torch", "habana_frameworks.torch.hpu", "habana_frameworks.torch.hpex",
        "habana_frameworks.torch.hpex.optimizers")}
    modules["habana_frameworks.torch.hpu"].memory_stats = lambda: {"Limit": 96 << 30}
    modules["habana_frameworks.torch.hpex.optimizers"].FusedAdamW = FusedAdamW
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(torch, "hpu", types.SimpleNamespace(reset_peak_memory_stats=lambda: None, max_memory_allocated=lambda: 1 << 20), raising=False)
    monkeypatch.setattr(torch, "compile", lambda model, backend=None: made["compiled"].append(backend) or model)
    return made


@pytest.mark.parametrize("trainer, lazy, fused, compiled", [
    # the other combinations are trial_program's, pinned above without a trial
    ("optimum-habana", False, ["habana FusedAdamW"], ["hpu_backend"]), ("transformers", True, ["torch AdamW fused"], []),
])
def test_on_gaudi_the_trials_run_the_training_program_and_bisect_past_a_workspace_oom(monkeypatch, settled_heap, trainer, lazy, fused, compiled):
    made = fake_gaudi_stack(monkeypatch)
    program = batch_size.trial_program("hpu", lazy, trainer)
    fits = batch_size.trial_steps(TinyLM(oom_from=6), FakeHPU(), "fp32", 8, 0, 0.9, 8, program)
    result = search(fits, limit=64)
    assert made["optimizers"] == fused and made["compiled"] == compiled
    assert result.largest_fit == 5 and [t.why for t in result.trials if not t.fits] == ["out of memory"] * 2  # 8, then 6: bisected


def test_a_second_search_for_the_same_program_reads_the_cache_and_a_scaled_learning_rate_is_not_part_of_it(monkeypatch, gaudi_home, settled_heap):
    """What rank 0 does for --batch-size auto (resolve): search, remember; the same again (the learning rate now scaled,
    which does not change what fits) reads the size back without a trial. What changes the answer is in the key: above."""
    fake_gaudi_stack(monkeypatch)

    def resolve(spec):
        return batch_size.resolve(spec, TinyLM(oom_from=6), FakeHPU(), "fp32", "transformers", rank=0, local_rank=0, world_size=1,
                                  local_world_size=1, limit=64)

    first = resolve(RunSpec(model="tiny-llama", sequence_length=8, batch_size="auto"))
    again = resolve(RunSpec(model="tiny-llama", sequence_length=8, batch_size="auto", lr_scaling="linear", base_batch_size=4))
    assert (first.how, first.size) == ("searched", 5) and len(first.trials) >= 4
    assert (again.how, again.size, again.trials) == ("cached", 5, []) and again.key_digest == first.key_digest


# -- learning-rate scaling: pure --------------------------------------------------------------
@pytest.mark.parametrize("scaling, global_batch, expected", [("linear", 64, 2.4e-3), ("sqrt", 32, 6e-4), ("none", 64, 3e-4), ("linear", 4, 1.5e-4)])
def test_the_learning_rate_follows_the_global_batch(scaling, global_batch, expected):
    spec = RunSpec(learning_rate=3e-4, lr_scaling=scaling, base_batch_size=8)
    assert spec.scaled_learning_rate(global_batch) == pytest.approx(expected)


@pytest.mark.parametrize("options, message", [
    (["--lr-scaling", "linear"], "--lr-scaling linear needs --base-batch-size B"),
    (["--batch-size", "auto", "--script", "train.py"], "--batch-size auto sizes the built-in trainer's batch"),
    (["--batch-size", "many"], "batch_size: must be a whole number of sequences or auto"),
    (["--batch-size", "0"], "batch_size: must be between 1 and 65536, or auto"),
    (["--memory-fraction", "1.5"], "memory_fraction"),
    (["--lr-scaling", "cubic", "--base-batch-size", "8"], "lr_scaling: must be one of"),
])
def test_bad_combinations_are_one_line_exit_2(gaudi_home, options, message, capsys):
    from gaudi_nb.cli import main  # what the console script calls, in this process: no interpreter to start per refusal

    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(["train", *options])
    stderr = capsys.readouterr().err
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert exited.value.code == 2 and len(lines) == 1 and message in lines[0], stderr
    assert gaudi_nb.runs() == []  # refused before anything started


def test_the_spec_takes_a_number_or_auto():
    assert RunSpec(batch_size="16").batch_size == 16 and RunSpec(batch_size="auto").batch_size == "auto"
    with pytest.raises(SpecError):
        RunSpec.from_options(batch_size=True)


def test_the_panel_says_how_the_batch_was_found():
    record = {"batch_size": {"per_device": 9, "global": 18, "how": "searched", "trials": 7, "search_s": 5.7},
              "learning_rate": {"base": 3e-4, "scaled": 1.35e-3, "scaling": "linear", "base_batch_size": 4}}
    text = batch_text(record)
    assert "9 per device · 18 global" in text and "auto: searched, 7 trials in 5.7 s" in text and "lr 0.00135 (linear from 0.0003 at 4)" in text
    assert batch_text({"batch_size": {"per_device": 4, "global": 8, "how": "given"}, "learning_rate": {"scaling": "none"}}) == ""
    from gaudi_nb.notebook.panel import PanelState, metrics_html

    state = PanelState("r")
    state.summary.update(record)
    assert "auto: searched, 7 trials in 5.7 s · lr 0.00135 (linear from 0.0003 at 4)</td>" in metrics_html(state)  # text in the metrics table, not markup


# -- real runs: two CPU ranks ----------------------------------------------------------------
def train(*options):
    result = subprocess.run([GAUDI_NB, "train", "--devices", "2", "--max-steps", "4", "--sequence-length", "64", *options, "--json"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(result.stdout)
    run = gaudi_nb.get_run(record["run_id"])
    return record, run.events(types=["batch_size"]), run.events(types=["step"])


@pytest.mark.slow
def test_auto_finds_a_size_under_a_small_memory_fraction_and_the_run_trains_with_it_at_the_scaled_rate(gaudi_home):
    # each rank's share of this machine's memory is the device; let about 170 MB of growth fit (tiny-llama at 64 tokens
    # grows by roughly 70 MB plus 12 MB a sequence), so the memory fraction, not the data, ends the doubling.
    # (A second run reading the cache is resolve's, above: one real run here.)
    fraction = f"{170e6 / (psutil.virtual_memory().total / 2):.6f}"
    record, (found,), steps = train("--batch-size", "auto", "--memory-fraction", fraction, "--lr-scaling", "linear", "--base-batch-size", "4")
    size = found["size"]
    assert record["status"] == "succeeded" and found["how"] == "searched" and 2 <= size < found["limit"]
    assert len(found["trials"]) >= 4 and any(t["why"] == "over the memory fraction" for t in found["trials"])
    assert all(t["peak_bytes"] <= float(fraction) * found["device_memory_bytes"] for t in found["trials"] if t["fits"])
    assert record["batch_size"] == {"per_device": size, "global": 2 * size, "how": "searched", "trials": len(found["trials"]),
                                    "search_s": found["seconds"], "memory_fraction": float(fraction)}
    assert steps[0]["tokens"] == size * 64 * 2  # the run trained with what the search found
    print(f"\nbatch search for tiny-llama, 64 tokens, 2 CPU ranks: size {size} after {len(found['trials'])} trials in {found['seconds']:.1f} s")
    # the learning rate scaled from the global batch the search found
    scaled = 3e-4 * (2 * size) / 4
    assert record["learning_rate"] == {"base": 3e-4, "scaled": pytest.approx(scaled), "scaling": "linear", "base_batch_size": 4}
    assert steps[0]["learning_rate"] == pytest.approx(scaled)  # the schedule starts from the scaled peak
