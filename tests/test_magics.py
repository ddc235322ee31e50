"""The IPython magics: real help, one-line UsageErrors, targets, configurable defaults, the YAML and script cell forms, and real runs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
from IPython.core.error import UsageError
from IPython.core.getipython import get_ipython
from IPython.testing.globalipapp import start_ipython
from IPython.utils.capture import capture_output

from gaudi_nb.notebook import magics as magics_module
from gaudi_nb.notebook.magics import GaudiMagics, parse_target, pyproject_defaults
from gaudi_nb.spec import RunSpec


@pytest.fixture
def ip(gaudi_home, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no pyproject.toml above tmp_path: only what a test writes
    monkeypatch.setenv("GAUDI_NB_PANEL", "static")
    start_ipython()  # once per process; later calls return None
    shell = get_ipython()
    shell.run_line_magic("load_ext", "gaudi_nb")
    magics = shell.magics_manager.registry["GaudiMagics"]
    for name in GaudiMagics.SPEC_TRAITS:  # the global shell outlives a test: reset what one set
        setattr(magics, name, None)
    magics.panel = "auto"
    # a notebook frontend asks for these; the terminal shell only formats text/plain
    monkeypatch.setattr(shell.display_formatter, "active_types", ["text/plain", "text/html", "image/png"])
    yield shell


@pytest.fixture
def captured(monkeypatch):
    """api.train replaced by a recorder: what options would a run start with?"""
    calls = []

    class FakeRun:
        run_id = "fake-run"

    def fake_train(options=None, **kw):
        calls.append(RunSpec.from_options(**{**(options or {}), **kw}).model_dump())
        return FakeRun()

    monkeypatch.setattr(magics_module.api, "train", fake_train)
    return calls


def test_help_lists_every_option_of_the_cli():
    doc = GaudiMagics.gaudi_train.__doc__
    for name in RunSpec.model_fields:
        assert "--" + name.replace("_", "-") in doc, name
    assert "--script" in doc and "YAML" in doc and "--lazy-mode, --no-lazy-mode" in doc
    assert "ssh://user@host[:port]" in GaudiMagics.gaudi_attach.__doc__


@pytest.mark.parametrize(
    "line, message",
    [
        ("--devices two", "argument --devices: invalid int value: 'two'"),
        ("--precision fp16", "precision: must be one of 'auto', 'bf16' or 'fp32' (got 'fp16')"),  # as gaudi-nb train says it
        ("--bogus 1", "unrecognized arguments: --bogus 1"),
        ("--max-steps 0", "max_steps: input should be greater than or equal to 1"),
        ("--model no-such-preset", "model: unknown preset 'no-such-preset'"),
        ("--instance-type nope.large", "instance_type: no price for instance type 'nope.large'"),
        ("--target ssh://root@example.org", "ssh://root@example.org is not attached: gaudi-nb nodes attach ssh://root@example.org --name NAME"),
        ("--target aws:dl1.24xlarge", "gaudi-nb nodes provision aws --instance-type dl1.24xlarge"),
    ],
)
def test_bad_arguments_raise_a_one_line_usage_error(ip, line, message):
    with pytest.raises(UsageError) as info:
        ip.run_line_magic("gaudi_train", line)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_parse_target_forms():
    assert parse_target("local").kind == "local"
    ssh = parse_target("ssh://ubuntu@10.0.0.5:2222")
    assert (ssh.kind, ssh.text, ssh.user, ssh.host, ssh.port) == ("ssh", "ssh://ubuntu@10.0.0.5:2222", "ubuntu", "10.0.0.5", 2222)
    assert parse_target("ssh://ubuntu@gaudi-node").port == 22
    for bad in ("aws:dl1.24xlarge", "gcp:x", "ssh://host-without-user", "ssh://u@h:99999", ""):
        with pytest.raises(UsageError):
            parse_target(bad)


def test_attach_local_works_and_remote_forms_say_what_is_wrong(ip, gaudi_home):
    with capture_output() as out:
        ip.run_line_magic("gaudi_attach", "local")
    assert "attached: local" in out.stdout
    assert ip.magics_manager.registry["GaudiMagics"].target == "local"
    with pytest.raises(UsageError, match=r"cannot reach"):  # a closed loopback port: an SSH attach, refused at once
        ip.run_line_magic("gaudi_attach", "ssh://root@127.0.0.1:1")
    with pytest.raises(UsageError, match=r"aws:dl1\.24xlarge: make the machine first.*gaudi-nb nodes provision aws --instance-type dl1\.24xlarge"):
        ip.run_line_magic("gaudi_attach", "aws:dl1.24xlarge")
    with pytest.raises(UsageError, match="no node 'kubernetes' is attached"):
        ip.run_line_magic("gaudi_attach", "kubernetes")
    with pytest.raises(UsageError, match="use local, an attached node's name"):
        ip.run_line_magic("gaudi_attach", "gcp:a3")


def test_defaults_come_from_pyproject_then_config_then_options(ip, captured, tmp_path):
    (tmp_path / "pyproject.toml").write_text("[tool.gaudi_nb]\ndevices = 3\nbudget_usd = 7.5\nprice-per-hour = 2.0\n")
    assert pyproject_defaults() == {"devices": 3, "budget_usd": 7.5, "price_per_hour": 2.0}
    ip.run_line_magic("gaudi_train", "--quiet")
    assert captured[-1]["devices"] == 3 and captured[-1]["budget_usd"] == 7.5 and captured[-1]["price_per_hour"] == 2.0
    ip.run_cell("%config GaudiMagics.budget_usd = 50")
    ip.run_line_magic("gaudi_train", "--quiet")
    assert captured[-1]["budget_usd"] == 50 and captured[-1]["devices"] == 3
    ip.run_line_magic("gaudi_train", "--quiet --devices 2 --budget-usd 9")
    assert captured[-1]["devices"] == 2 and captured[-1]["budget_usd"] == 9
    (tmp_path / "pyproject.toml").write_text("[tool.gaudi_nb]\ngpus = 3\n")
    with pytest.raises(UsageError, match="unknown keys gpus"):
        ip.run_line_magic("gaudi_train", "--quiet")


def test_cell_body_is_yaml_config_with_notebook_variables(ip, captured):
    ip.user_ns.update(steps=7, price=None)
    result = ip.run_cell("%%gaudi_train --quiet --devices 2\nmodel: tiny-gpt2\nmax-steps: {steps}\nprice_per_hour: {price}\nlearning_rate: 0.001\n")
    assert result.success, result.error_in_exec
    assert result.result.run_id == "fake-run" and ip.user_ns["_"] is result.result  # run = _ works
    spec = captured[-1]
    assert spec["model"] == "tiny-gpt2" and spec["max_steps"] == 7 and spec["devices"] == 2 and spec["learning_rate"] == 0.001 and spec["price_per_hour"] is None
    with pytest.raises(UsageError, match="not valid YAML at line 2"):
        ip.run_cell_magic("gaudi_train", "--quiet", "model: a\n  bad: [\n")
    with pytest.raises(UsageError, match="must hold a mapping"):
        ip.run_cell_magic("gaudi_train", "--quiet", "- a list\n")
    with pytest.raises(UsageError, match="unknown option 'gpus'"):
        ip.run_cell_magic("gaudi_train", "--quiet", "gpus: 8\n")


def test_script_form_needs_a_cell_body(ip):
    with pytest.raises(UsageError, match="use %%gaudi_train --script"):
        ip.run_line_magic("gaudi_train", "--script")


SCRIPT = textwrap.dedent(
    """
    import torch
    from gaudi_nb.worker.script import device, init_distributed, precision, rank, report, should_stop, spec, world_size

    init_distributed()
    torch.manual_seed(rank())
    model = torch.nn.Linear(16, 1).to(device())
    model = torch.nn.parallel.DistributedDataParallel(model) if world_size() > 1 else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    assert precision() == "fp32"
    for step in range(1, spec().max_steps + 1):
        x = torch.randn(32, 16, device=device())
        loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        report(step=step, loss=loss.item(), tokens=32 * 16 * world_size(), samples=32 * world_size(), rank_seen=rank())
        if should_stop():
            break
    """
)


# a rank of a script that does not import torch starts without it (accel.detect would import it to ask about CUDA)
NO_GPU = {**os.environ, "GAUDI_NB_ACCELERATOR": "cpu"}

ENDS_WITH_LOOSE_ENDS = textwrap.dedent(
    """
    import atexit, sys, threading, time
    from pathlib import Path

    out = Path(sys.argv[0]).parent
    log = open(out / "unclosed.txt", "w")  # buffered and never closed
    log.write("written by the script")
    atexit.register(lambda: (out / "atexit.txt").write_text("exit handler ran"))
    threading.Thread(target=lambda: (time.sleep(0.5), (out / "thread.txt").write_text("thread finished"))).start()
    print("last words", end="")  # no newline: still in stdout's buffer at the end
    """
)


@pytest.mark.parametrize("how", ["runs to its end", "calls sys.exit(0)"])
def test_a_script_that_ends_cleanly_exits_0_with_what_it_left_finished(gaudi_home, tmp_path, how):
    # a clean end skips the interpreter's teardown (a backend thread can abort the rank there, see
    # rank.exit_cleanly); what the teardown does that a user sees must still happen
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "run.json").write_text(json.dumps({"run_id": "script-run", "node": "local"}))
    (folder / "spec.json").write_text(RunSpec(max_steps=1).model_dump_json())
    (folder / "script.py").write_text(ENDS_WITH_LOOSE_ENDS + ("sys.exit(0)\n" if how == "calls sys.exit(0)" else ""))
    result = subprocess.run([sys.executable, "-m", "gaudi_nb.worker.script", "--run-dir", str(folder)], capture_output=True, text=True, timeout=120, env=NO_GPU)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.endswith("last words")
    assert (folder / "atexit.txt").read_text() == "exit handler ran"
    assert (folder / "thread.txt").read_text() == "thread finished"
    assert (folder / "unclosed.txt").read_text() == "written by the script"


def test_a_script_that_does_not_import_torch_runs_without_it(gaudi_home, tmp_path):
    # a plain loop (and the suite's plumbing runs) starts in well under a second: torch takes seconds to import
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "run.json").write_text(json.dumps({"run_id": "script-run", "node": "local"}))
    (folder / "spec.json").write_text(RunSpec(max_steps=1).model_dump_json())
    (folder / "script.py").write_text(textwrap.dedent("""
        import sys
        from pathlib import Path
        from gaudi_nb.worker.script import report
        report(step=1, loss=1.0, tokens=8)
        Path(sys.argv[0]).with_name("torch_loaded.txt").write_text(str("torch" in sys.modules))
    """))
    result = subprocess.run([sys.executable, "-m", "gaudi_nb.worker.script", "--run-dir", str(folder)], capture_output=True, text=True, timeout=120, env=NO_GPU)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (folder / "torch_loaded.txt").read_text() == "False"
    events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
    (start,) = [e for e in events if e["type"] == "worker_start"]
    assert start["torch_version"] and start["trainer"] == "script"  # still says which torch the node has
    assert [e["step"] for e in events if e["type"] == "step"] == [1]


def test_script_runner_reports_the_scripts_exception(gaudi_home, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "run.json").write_text(json.dumps({"run_id": "script-run", "node": "local"}))
    (folder / "spec.json").write_text(RunSpec(max_steps=5).model_dump_json())
    (folder / "script.py").write_text("raise ValueError('bad batch')\n")
    result = subprocess.run([sys.executable, "-m", "gaudi_nb.worker.script", "--run-dir", str(folder)], capture_output=True, text=True, timeout=120, env=NO_GPU)
    assert result.returncode != 0
    errors = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines() if '"worker_error"' in line]
    assert errors and errors[0]["error"] == "ValueError: bad batch"


@pytest.mark.slow
def test_script_cell_trains_on_every_rank_in_fresh_processes(ip):
    with capture_output():
        run = ip.run_cell_magic("gaudi_train", "--script --devices 2 --max-steps 4 --warmup-steps 1", SCRIPT)
    record = run.record()
    assert record["status"] == "succeeded", record["exit"]
    assert record["trainer"] == "script" and record["steps_completed"] == 4
    starts, steps = run.events(types=["worker_start"]), run.events(types=["step"])
    # every rank says it started, with its own pid (a client kills ranks that outlive a lost agent by it)
    assert sorted(e["rank"] for e in starts) == [0, 1] and len({e["pid"] for e in starts}) == 2
    assert all(e["trainer"] == "script" and e["world_size"] == 2 for e in starts)
    assert [e["step"] for e in steps] == [1, 2, 3, 4] and all(e["rank"] == 0 and e["rank_seen"] == 0 for e in steps)
    assert steps[0]["warmup"] and not steps[1]["warmup"] and steps[1]["tokens_per_second"] > 0


def test_train_watch_runs_cost_and_stop_on_a_run(ip, monkeypatch):
    """The magics around one run, a torch-free loop (tests/scriptrun.py): what they show is the door's, not the trainer's."""
    import scriptrun

    monkeypatch.setenv("GAUDI_NB_ACCELERATOR", "cpu")  # the rank need not import torch to learn there is no GPU
    with capture_output() as out:
        result = ip.run_cell("%%gaudi_train --script --max-steps 4 --price-per-hour 3.6\n" + scriptrun.LOOP.format(step_s=0.05))
    assert result.success, result.error_in_exec
    run = ip.user_ns["_"]
    assert run.run_id == result.result.run_id
    # headless (papermill-like): the magic waited and left the final state as an image and a summary
    assert any("image/png" in o.data for o in out.outputs)
    assert f"run {run.run_id}: succeeded, step 4/4" in out.stdout and "$3.60/h" in out.stdout
    with capture_output() as out:
        listed = ip.run_line_magic("gaudi_runs", "")
    assert listed[0]["run_id"] == run.run_id and run.run_id in listed._repr_html_() and "succeeded" in repr(listed)
    with capture_output() as out:
        ip.run_line_magic("gaudi_stop", run.run_id)
    assert "already ended: succeeded" in out.stdout
    with capture_output() as out:
        ip.run_line_magic("gaudi_cost", run.run_id)
    assert "$3.60/h" in out.outputs[0].data["text/html"]
    with capture_output() as out:
        watched = ip.run_line_magic("gaudi_watch", run.run_id[:20])
    assert watched.run_id == run.run_id and "succeeded, step 4/4" in out.stdout


def test_cost_magic_shows_catalog_and_estimates(ip):
    ip.run_cell("%config GaudiMagics.price_per_hour = 13.11")
    with capture_output() as out:
        ip.run_line_magic("gaudi_cost", "")
    page = out.outputs[0].data["text/html"]
    assert "dl1.24xlarge" in page and "price $13.11/h (explicit price_per_hour)" in page
    with capture_output() as out:
        ip.run_line_magic("gaudi_cost", "--parameters 8e9 --tokens 1e9")
    page = out.outputs[0].data["text/html"]
    assert "How these estimates are made" in page and "unknown" in page
    with pytest.raises(UsageError, match="give --parameters N or --model PRESET"):
        ip.run_line_magic("gaudi_cost", "--tokens 1e9")


def test_stop_without_runs_says_how_to_start_one(ip):
    ip.magics_manager.registry["GaudiMagics"].started.clear()
    with pytest.raises(UsageError, match="no runs yet"):
        ip.run_line_magic("gaudi_stop", "")
    with pytest.raises(UsageError, match="no run 'nope'"):
        ip.run_line_magic("gaudi_watch", "nope")


@pytest.mark.parametrize("magic", ["gaudi_watch", "gaudi_stop", "gaudi_resume", "gaudi_cost"])
@pytest.mark.parametrize("run_id", ["{boom()}", "$boom", "/etc", "a\nb"])
def test_a_magic_that_takes_a_run_id_refuses_what_is_not_one_and_evaluates_nothing(ip, magic, run_id):
    """A run id from a shared store (or a sidebar click) is data: nothing in it runs in this kernel."""
    calls = []
    ip.user_ns.update(calls=calls, boom=lambda: calls.append("ran") or "x")
    with pytest.raises(UsageError) as info:
        ip.run_line_magic(magic, run_id)
    assert calls == [] and "\n" not in str(info.value)
    assert "not a run id" in str(info.value) or "unrecognized arguments" in str(info.value)


def test_launcher_choices_come_from_the_registries_and_catalog(gaudi_home):
    import gaudi_nb
    from gaudi_nb.cost import load_catalog
    from gaudi_nb.presets import dataset_presets, model_presets

    launcher = gaudi_nb.launcher(devices=2, max_steps=9)
    assert list(launcher.model.options) == model_presets.names()
    assert list(launcher.dataset.options) == dataset_presets.names()
    assert [v for _, v in launcher.instance_type.options][1:] == [p.instance_type for p in load_catalog()]
    assert "local" in [v for _, v in launcher.target.options]
    assert launcher.options()["devices"] == 2 and launcher.options()["max_steps"] == 9 and launcher.options()["instance_type"] is None
    assert "aws" not in [v for _, v in launcher.target.options]  # a cloud machine is provisioned (Machines), then a target by name
    launcher.budget_usd.value = "lots"
    assert launcher.launch() is None and "budget: a number" in launcher.message.value
    assert not launcher.runs


def test_gaudi_resume_continues_the_stopped_run_from_its_checkpoint_and_shows_its_panel(ip, monkeypatch):
    """The door's part of resume, on a torch-free loop (tests/scriptrun.py): that a real trainer picks up its
    checkpoint is test_faults' real run."""
    import scriptrun

    monkeypatch.setenv("GAUDI_NB_ACCELERATOR", "cpu")  # the rank need not import torch to learn there is no GPU
    with capture_output():
        run = ip.run_cell_magic("gaudi_train", "--script --quiet --max-steps 500 --save-steps 3 --warmup-steps 1", scriptrun.LOOP.format(step_s=0.05))
    deadline = time.monotonic() + 120
    while not run.events(types=["checkpoint"]) and time.monotonic() < deadline:
        time.sleep(0.3)
    with pytest.raises(UsageError, match=f"run {run.run_id} is still (starting|running): stop it first"):
        ip.run_line_magic("gaudi_resume", "")
    with capture_output():
        ip.run_line_magic("gaudi_stop", "")
    run.wait(timeout=120)
    from_step = run.record()["checkpoints"][-1]["step"]
    with capture_output() as shown:
        resumed = ip.run_line_magic("gaudi_resume", f"{run.run_id[:12]} --max-steps {from_step + 4}")  # a prefix is enough
    assert resumed.run_id == run.run_id and f"resumed {run.run_id} from step {from_step} (attempt 2)" in shown.stdout
    assert any("image/png" in output.data for output in shown.outputs)  # its panel (static here) under the cell
    resumed.wait(timeout=120)
    record = resumed.record()
    assert record["status"] == "succeeded" and record["attempt"] == 2 and record["steps_completed"] == from_step + 4, record["exit"]
    with pytest.raises(UsageError, match=f"nothing left to train; resume with --max-steps above {from_step + 4}"):
        ip.run_line_magic("gaudi_resume", "")  # the default: the last run started or resumed here


def test_gaudi_cost_reads_a_notebook_variable_by_name_and_evaluates_nothing(ip, capsys):
    """`%gaudi_cost --tokens {tokens}` (notebook 02) takes the variable's value; the line itself is never expanded."""
    ip.user_ns.update(tokens=1e9, boom=lambda: (_ for _ in ()).throw(AssertionError("evaluated")))
    ip.run_line_magic("gaudi_cost", "--parameters 8e9 --tokens {tokens}")
    ip.run_line_magic("gaudi_cost", "--parameters 8e9 --tokens $tokens")
    with pytest.raises(UsageError, match="no variable missing"):
        ip.run_line_magic("gaudi_cost", "--parameters 8e9 --tokens {missing}")
    ip.user_ns["run"] = type("R", (), {"run_id": "a/b"})()  # {run.run_id}: the attribute is looked up, then checked as any id
    with pytest.raises(UsageError, match="not a run id"):
        ip.run_line_magic("gaudi_cost", "{run.run_id}")
    with pytest.raises(UsageError, match="--tokens"):
        ip.run_line_magic("gaudi_cost", "--parameters 8e9 --tokens {boom()}")
