"""The CLI as a user types it: one-line errors with exit code 2, and nothing recorded for bad input."""
import json
import os
import subprocess

import pytest
from conftest import BIN

GAUDI_NB = str(BIN / "gaudi-nb")


def run_cli(*args, env=None, timeout=120):
    return subprocess.run([GAUDI_NB, *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--model", "tiny-lama"], "model: unknown preset 'tiny-lama'"),
        (["--devices", "0"], "devices: input should be greater than or equal to 1"),
        (["--budget-usd", "-1"], "budget_usd: input should be greater than 0"),
        (["--budget-usd", "nan"], "budget_usd: input should be a finite number (got nan)"),
        (["--dataset", "no/such/file.jsonl"], "/no/such/file.jsonl: give an existing"),
        (["--instance-type", "x9.huge"], "instance_type: no price for instance type 'x9.huge'"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_stored(tmp_path, args, expected):
    # the home is the CLI's alone (not this test process's environment), so only the command under test can write there
    home = tmp_path / "cli_home"
    env = {**os.environ, "GAUDI_NB_HOME": str(home)}
    env.pop("GAUDI_NB_STORE_URL", None)
    result = run_cli("train", *args, env=env)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in result.stderr
    assert not (home / "runs").exists()
    runs = run_cli("runs", "--json", env=env)
    assert json.loads(runs.stdout) == []


def test_unknown_run_is_one_line(gaudi_home):
    result = run_cli("show", "no-such-run")
    assert result.returncode == 1
    assert result.stderr.strip() == "error: no run 'no-such-run' in the store: gaudi-nb runs lists them"


@pytest.mark.parametrize("command", [["show", "/etc"], ["resume", "a{b}\n"]])
def test_a_run_door_refuses_what_is_not_a_run_id_in_one_line_exit_2(gaudi_home, command):
    result = run_cli(*command)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: not a run id: ")
    assert not (gaudi_home / "runs").exists() or not any((gaudi_home / "runs").iterdir())


def test_doctor_reports_cpu_honestly(gaudi_home):
    result = run_cli("doctor", "--json")
    report = json.loads(result.stdout)
    assert report["accelerator"] == "cpu"  # no Gaudi card here: never reported as HPU
    assert "host" in report["telemetry_sources"]
    names = {c["name"]: c for c in report["checks"]}
    assert names["habana-torch-plugin"]["ok"] is False and "Intel" in names["habana-torch-plugin"]["hint"]


def test_store_strings_print_as_written_never_as_markup(gaudi_home):
    """A teammate's run or node row is text: markup in it neither styles nor breaks the tables ("[/]" alone made Rich raise)."""
    from gaudi_nb.store import RunStore

    store = RunStore()
    store.register("r1", spec={}, target="[/] [red]evil[/red]", run_dir=None)
    store.add_node({"name": "n1", "url": "ssh://u@h:22", "user": "u", "host": "h", "port": 22, "accelerator": "[/]"})
    runs, nodes = run_cli("runs"), run_cli("nodes", "list")
    assert runs.returncode == 0 and "[/] [red]evil[/red]" in runs.stdout, runs.stderr
    assert nodes.returncode == 0 and "[/]" in nodes.stdout, nodes.stderr



def test_doctor_prints_a_hint_with_its_extra(monkeypatch, capsys):
    """'gaudi_nb[ssh]' printed as 'gaudi_nb' when the hint was read as markup."""
    from gaudi_nb import cli, doctor

    checks = [{"name": "asyncssh", "ok": False, "found": "missing", "hint": "pip install 'gaudi_nb[ssh]' (attach nodes over SSH)"}]
    monkeypatch.setattr(doctor, "report", lambda: {"checks": checks})
    cli.doctor(as_json=False)
    assert "pip install 'gaudi_nb[ssh]'" in " ".join(capsys.readouterr().out.split())


def test_cost_catalog_shows_unknown_prices_as_unknown(gaudi_home):
    rows = json.loads(run_cli("cost", "catalog", "--json").stdout)
    by_type = {r["instance_type"]: r for r in rows}
    assert by_type["dl1.24xlarge"]["on_demand_per_hour"] == 13.11
    assert by_type["gx3d-160x1792x8gaudi3"]["on_demand_per_hour"] is None
    text = run_cli("cost", "catalog").stdout
    assert "unknown" in text


def test_cost_estimate_prints_assumptions_and_arithmetic(gaudi_home):
    result = run_cli("cost", "estimate", "--parameters", "7e9", "--tokens", "1e9", "--json")
    data = json.loads(result.stdout)
    assert "6 × parameters × tokens" in data["assumptions"]
    p5 = next(r for r in data["estimates"] if r["instance_type"] == "p5.48xlarge")
    hours = 6 * 7e9 * 1e9 / (989e12 * 8 * 0.35) / 3600
    assert p5["hours"] == pytest.approx(hours, rel=1e-6)
    assert p5["usd"] == pytest.approx(hours * p5["price_per_hour"], rel=1e-6)
    text = run_cli("cost", "estimate", "--model", "tiny-llama", "--tokens", "1e6").stdout
    assert "MFU" in text and "parameters" in text


def test_cost_estimate_without_size_is_bad_input(gaudi_home):
    result = run_cli("cost", "estimate", "--tokens", "1e9")
    assert result.returncode == 2 and "give --parameters N or --model PRESET" in result.stderr


def test_tables_fit_an_80_column_terminal_and_keep_every_name_whole(gaudi_home):
    import os

    env = {**os.environ, "COLUMNS": "80"}
    for args in (("cost", "catalog"), ("cost", "estimate", "--parameters", "8e9", "--tokens", "2e10")):
        text = run_cli(*args, env=env).stdout
        table = text.split("\n[1]")[0].split("How these")[0]
        assert all(len(line) <= 80 for line in table.splitlines()), table
        assert "gx3d-160x1792x8gaudi3" in table and "8× Gaudi HL-205" in table and "…" not in table, table
    catalog = run_cli("cost", "catalog", env=env).stdout
    assert "[1] https://aws.amazon.com/ec2/pricing/on-demand/" in catalog  # sources are footnotes, printed whole
    assert "us-west-2" in run_cli("cost", "catalog", "--wide", env=env).stdout


def test_error_text_is_printed_as_written_not_as_markup(gaudi_home):
    result = run_cli("train", "--instance-type", "[bold]x9[/bold]")
    assert result.returncode == 2 and "'[bold]x9[/bold]'" in result.stderr, result.stderr


def test_doctor_never_prints_the_store_password(gaudi_home):
    import os

    env = {**os.environ, "GAUDI_NB_HOME": str(gaudi_home), "GAUDI_NB_STORE_URL": "postgresql+psycopg://team:s3cret-pw@db.example:5432/runs"}
    for args in (("doctor",), ("doctor", "--json")):
        result = run_cli(*args, env=env)
        assert "s3cret-pw" not in result.stdout + result.stderr and "team:**" in result.stdout
    assert "postgresql+psycopg://team:***@db.example:5432/runs" in run_cli("doctor", "--json", env=env).stdout
