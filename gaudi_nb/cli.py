"""gaudi-nb: the command line, a thin layer over the Python API with the same keyword names."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from . import api, audit, runs_table
from .cli_options import with_spec_options
from .errors import GaudiNbError, NotAllowedError, SpecError
from .events import TERMINAL_STATUSES
from .formatting import bad_lines, money, rate

app = typer.Typer(help="Train on Intel Gaudi (or CPU/CUDA) and watch runs, throughput and money.", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
cost_app = typer.Typer(help="Prices and pre-run estimates.", no_args_is_help=True)
app.add_typer(cost_app, name="cost")

# markup off: what is printed is text (a run id, a node name, a store string, "pip install 'gaudi_nb[ssh]'"),
# never Rich markup; emphasis is a Text with a style
out = Console(markup=False)
err = Console(stderr=True, markup=False)
FORCE_HELP = "an admin on a team store: act on someone else's run or machine (the audit trail records it)"


@app.command()
@with_spec_options
def train(
    detach: bool = typer.Option(False, "--detach", "-d", help="start the run and return; it goes on without this process"),
    as_json: bool = typer.Option(False, "--json", help="print the final run record as JSON (progress goes to stderr)"),
    spec_file: Optional[Path] = typer.Option(None, "--spec-file", help="YAML or JSON file of RunSpec fields; options override it"),
    **options: Any,
) -> None:
    """Start a training run on the target and follow it with a live progress line."""
    base = api.load_spec_file(spec_file) if spec_file else {}
    run = api.train(base, **options)
    console = err if as_json else out
    if detach:
        if as_json:
            out.print_json(json.dumps(run.record()))
        else:
            console.print(Text.assemble("started ", (run.run_id, "bold"), f" (detached). Follow it: gaudi-nb logs {run.run_id} -f · gaudi-nb show {run.run_id}"))
        return
    console.print(Text.assemble("run ", (run.run_id, "bold"), f" on {run.store.get(run.run_id)['target']}; Ctrl-C leaves it running"))
    follow_to_the_end(run, console, as_json)


@app.command()
def resume(
    run_id: str = typer.Argument(..., help="run id (a unique prefix is enough)"),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help=api.RESUME_OPTIONS["max_steps"]),
    budget_usd: Optional[float] = typer.Option(None, "--budget-usd", help=api.RESUME_OPTIONS["budget_usd"]),
    detach: bool = typer.Option(False, "--detach", "-d", help="resume the run and return; it goes on without this process"),
    as_json: bool = typer.Option(False, "--json", help="print the final run record as JSON (progress goes to stderr)"),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Continue a stopped, failed or lost run from its last checkpoint: the same run, as its next attempt."""
    run = api.resume(run_id, max_steps=max_steps, budget_usd=budget_usd, force=force)
    console = err if as_json else out
    restart = (run.record().get("restarts") or [{}])[-1]
    console.print(Text.assemble("resumed ", (run.run_id, "bold"), f" from step {restart.get('from_step')} (attempt {restart.get('attempt')})" + ("" if detach else "; Ctrl-C leaves it running")))
    if detach:
        if as_json:
            out.print_json(json.dumps(run.record()))
        return
    follow_to_the_end(run, console, as_json)


def follow_to_the_end(run: api.Run, console: Console, as_json: bool) -> None:
    """Show a run's progress until it ends, then its record; Ctrl-C leaves it running. Exit 1 if it failed."""
    try:
        record = follow_with_progress(run, console)
    except KeyboardInterrupt:
        console.print(f"\nleft {run.run_id} running: gaudi-nb show {run.run_id} · gaudi-nb stop {run.run_id}")
        raise typer.Exit(130) from None
    if as_json:
        out.print_json(json.dumps(record))
    else:
        print_record(record, console)
    if record["status"] == "failed":
        raise typer.Exit(1)


def progress_line(record: Dict[str, Any]) -> Text:
    """step 12/50 · loss 6.81 · 2,680 tok/s · $0.0031 (budget $1.00) · running"""
    m, c = record["metrics"], record["cost"]
    parts = [f"step {record['steps_completed']}/{record.get('max_steps') or '?'}"]
    if m.get("final_loss") is not None:
        parts.append(f"loss {m['final_loss']:.4f}")
    if m.get("tokens_per_second"):
        parts.append(f"{m['tokens_per_second']:,.0f} tok/s")
    parts.append(money(c.get("usd")) + (f" of {money(c['budget_usd'])} budget" if c.get("budget_usd") else ""))
    parts.append(phase(record))
    if (record.get("attempt") or 1) > 1:
        parts.append(f"attempt {record['attempt']}")
    return Text(" · ".join(parts))


def phase(record: Dict[str, Any]) -> str:
    """The status, with what a running run is doing between its events."""
    status = record["status"]
    if status == "starting" or (status == "running" and record["steps_completed"] == 0):
        return "starting ranks"
    if status == "running" and record["steps_completed"] >= (record.get("max_steps") or 1 << 62):
        return "saving the final checkpoint"
    from .runs_table import status_text

    return status_text(record)  # pending: Insufficient habana.ai/gaudi, while a cluster's scheduler cannot place the run


FOLLOW_POLL_S = 0.25  # a poll reads a file from an offset and one row: cheap, and the run's end shows at once


def follow_with_progress(run: api.Run, console: Console) -> Dict[str, Any]:
    """A live line on a terminal; one line per new step otherwise (CI logs, pipes)."""
    record = run.record()
    done = TERMINAL_STATUSES
    if not console.is_terminal:
        shown = None
        while True:
            key = (record["steps_completed"], record["status"], str(record.get("queued")))
            if key != shown:
                console.print(progress_line(record).plain, highlight=False, soft_wrap=True)
                shown = key
            if record["status"] in done:
                return record
            time.sleep(FOLLOW_POLL_S)
            record = run.record()
    with Live(progress_line(record), console=console, refresh_per_second=4, transient=False) as live:
        while record["status"] not in done:
            time.sleep(FOLLOW_POLL_S)
            record = run.record()
            live.update(progress_line(record))
    return record


def print_record(record: Dict[str, Any], console: Console = out) -> None:
    m, c = record["metrics"], record["cost"]
    table = Table(show_header=False, box=None)
    rows = [
        ("run", record["run_id"]),
        ("status", record["status"] + (f" ({record['queued']['reason']})" if record.get("queued") and record["status"] == "pending" else "")),
        ("steps", f"{record['steps_completed']}/{record.get('max_steps')}"),
        ("accelerator", accelerator_line(record)),
        ("loss", f"{_num(m.get('first_loss'))} → {_num(m.get('final_loss'))}"),
        ("eval loss", _num(m.get("eval_loss"))),
        ("throughput", f"{m['tokens_per_second']:,.0f} tokens/s (warmup left out)" if m.get("tokens_per_second") else "unknown"),
        ("model FLOPs", flops_line(m)),
        ("cost", cost_line(c)),
        ("$ per 1M tokens", money(c.get("usd_per_million_tokens"))),
        ("telemetry samples", str(record.get("telemetry_samples"))),
        ("run folder", str(record.get("run_dir"))),
    ]
    parameters = record.get("parameters") or {}
    if record.get("lora") and parameters.get("total"):
        rows.append(("LoRA", f"{parameters['trainable']:,} of {parameters['total']:,} parameters train (rank {record['lora'].get('rank')}, {','.join(record['lora'].get('target_modules') or [])})"))
    for name, tracker in (record.get("trackers") or {}).items():
        rows.append((name, str(tracker.get("url") or tracker.get("tracker_run_id"))))
    restarts = record.get("restarts") or []
    if restarts:
        last = restarts[-1]
        rows.append(("attempt", f"{record.get('attempt')}: {last.get('cause')} from step {last.get('from_step')} ({last.get('reason')})"))
    exit_info = record.get("exit") or {}
    if exit_info.get("reason"):
        rows.append(("reason", exit_info["reason"]))
    warning = bad_lines(record)
    if warning:
        rows.append(("bad lines", warning))
    for key, value in rows:
        table.add_row(Text(key, style="dim"), Text(str(value)))
    console.print(table)
    if record["status"] == "failed" and exit_info.get("last_log_lines"):
        console.print(Text("last log lines:", style="dim"))
        console.print(Text("\n".join(exit_info["last_log_lines"])))


def accelerator_line(record: Dict[str, Any]) -> str:
    """cpu × 2 (fp32, transformers, eager), or what is known before the ranks start."""
    if record.get("device_count") is None:
        where = record.get("accelerator")
        return f"{where}: ranks not started yet" if where else "not started yet"
    details = ", ".join(str(v) for v in (record.get("precision"), record.get("trainer"), record.get("execution_mode")) if v)
    from .gaudi_stack import OPTIMUM_HABANA_EOS

    past = f" · {OPTIMUM_HABANA_EOS}" if record.get("trainer") == "optimum-habana" else ""  # said where the trainer is named
    return f"{record.get('accelerator')} × {record.get('device_count')} ({details}){past}"


def flops_line(m: Dict[str, Any]) -> str:
    if m.get("tflops") is None:
        return "unknown"
    mfu = f"MFU {m['mfu']:.1%}" if m.get("mfu") is not None else f"MFU unknown ({m.get('peak_source')})"
    return f"{m['tflops']:,.3g} TFLOP/s (6 × parameters × tokens/s) · {mfu}"


def cost_line(cost: Dict[str, Any]) -> str:
    if cost.get("price_per_hour") is None:
        return "unknown: no price for this node (give --price-per-hour or --instance-type)"
    return f"{money(cost.get('usd'))} at {rate(cost['price_per_hour'])} × {cost.get('nodes') or 1} node(s) ({cost.get('price_source')})"


def _num(value: Optional[float]) -> str:
    return "—" if value is None else f"{value:.4f}"


@app.command()
def runs(
    limit: int = typer.Option(20, help="how many runs, newest first"),
    as_json: bool = typer.Option(False, "--json", help="print JSON records"),
) -> None:
    """List recent runs."""
    records = api.runs(limit=limit)
    if as_json:
        out.print_json(json.dumps(records))
        return
    table = compact_table(*runs_table.HEAD)
    for record in records:
        table.add_row(*runs_table.row_cells(runs_table.run_row(record)))
    out.print(table)


@app.command()
def show(run_id: str = typer.Argument(..., help="run id (a unique prefix is enough)"), as_json: bool = typer.Option(False, "--json", help="print the run record as JSON")) -> None:
    """Show one run: status, metrics, cost."""
    record = api.get_run(run_id).record()
    if as_json:
        out.print_json(json.dumps(record))
    else:
        print_record(record)


@app.command()
def logs(
    run_id: str = typer.Argument(..., help="run id"),
    follow: bool = typer.Option(False, "--follow", "-f", help="keep printing new lines until the run ends"),
    node: Optional[str] = typer.Option(None, "--node", help="a multi-node run's log on this node (default: node 0's, where rank 0 logs)"),
) -> None:
    """Print a run's training log."""
    run = api.get_run(run_id)
    path = run.logs(node)
    position = 0
    while True:
        if path.exists():
            with open(path, "rb") as fh:
                fh.seek(position)
                chunk = fh.read()
                position += len(chunk)
            sys.stdout.write(chunk.decode(errors="replace"))
            sys.stdout.flush()
        if not follow or run.done:
            return
        time.sleep(0.5)


@app.command()
def events(
    run_id: str = typer.Argument(..., help="run id"),
    type_: Optional[List[str]] = typer.Option(None, "--type", "-t", help="only events of this type (repeatable)"),
) -> None:
    """Print a run's events as JSON lines."""
    for event in api.get_run(run_id).events(types=type_):
        sys.stdout.write(json.dumps(event) + "\n")


@app.command()
def export(
    run_id: str = typer.Argument(..., help="run id (a unique prefix is enough)"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="the folder to write (default: the run folder's export/)"),
    as_json: bool = typer.Option(False, "--json", help="print what was written as JSON"),
) -> None:
    """Write the run's last complete checkpoint as a model folder (a LoRA adapter merged into its base) that from_pretrained loads."""
    from .export import export_run

    written = export_run(api.get_run(run_id).record(), output)
    if as_json:
        out.print_json(json.dumps(written))
    else:
        out.print(f"exported {written['run_id']} step {written['step']} ({written['kind']}) to {written['output']}", highlight=False)


@app.command()
def stop(run_id: str = typer.Argument(..., help="run id"), force: bool = typer.Option(False, "--force", help=FORCE_HELP)) -> None:
    """Ask a run to stop cleanly: the ranks finish two steps and save a checkpoint."""
    answer = api.stop(run_id, force=force)
    out.print(answer.line(then=f"gaudi-nb show {answer.run_id}"), highlight=False, markup=False)


@app.command()
def doctor(as_json: bool = typer.Option(False, "--json", help="print the report as JSON")) -> None:
    """What this machine can do: accelerator, software versions, telemetry source, what is missing."""
    from .doctor import report

    result = report()
    if as_json:
        out.print_json(json.dumps(result))
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("check", no_wrap=True)
    table.add_column("found", overflow="fold")  # a path or a URL is shown whole, folded if it must be
    table.add_column("note")
    for row in result["checks"]:
        style = "green" if row["ok"] else "yellow"
        table.add_row(row["name"], Text(str(row["found"]), style=style), row.get("hint") or "")
    out.print(table)


@cost_app.command("catalog")
def cost_catalog(
    as_json: bool = typer.Option(False, "--json", help="print JSON rows"),
    wide: bool = typer.Option(False, "--wide", help="also regions, spot prices and each source in full in the table"),
) -> None:
    """The price catalog: every row with its source and date (unknown prices shown as unknown)."""
    from dataclasses import asdict

    from .cost.catalog import load_catalog

    rows = load_catalog()
    if as_json:
        out.print_json(json.dumps([asdict(r) for r in rows]))
        return
    if wide:
        table = compact_table("provider", "instance type", "region", "accelerators", "on-demand $/h", "spot $/h", "as of", "source")
        for r in rows:
            table.add_row(r.provider, r.instance_type, r.region or "—", f"{r.accelerator_count}× {r.accelerator}", money(r.on_demand_per_hour), money(r.spot_per_hour), r.as_of, r.source)
        Console(width=1000).print(table)  # wide means wide: for a pager (less -S) or a file
        return
    # What fits 80 columns; each source is a footnote printed whole below the table.
    sources: List[str] = []
    table = compact_table("provider", "instance type", "accelerators", "$/h", "as of", "src")
    for r in rows:
        if r.source not in sources:
            sources.append(r.source)
        table.add_row(r.provider, r.instance_type, f"{r.accelerator_count}× {r.accelerator}", money(r.on_demand_per_hour), r.as_of, f"[{sources.index(r.source) + 1}]")
    out.print(table)
    for number, source in enumerate(sources, 1):
        out.print(Text(f"[{number}] {source}", style="dim"), soft_wrap=True)
    out.print(Text("$/h: on demand, per node; --wide adds regions and spot prices; --json has every field", style="dim"))


def compact_table(*columns: str) -> Table:
    """A borderless table whose columns never wrap: a narrow terminal cuts the widest cell, not every word."""
    table = Table(box=None, pad_edge=False, collapse_padding=True, header_style="bold")
    for name in columns:
        table.add_column(name, no_wrap=True, overflow="ellipsis")
    return table


@cost_app.command("estimate")
def cost_estimate(
    parameters: Optional[float] = typer.Option(None, "--parameters", help="model size in parameters (7e9); or give --model"),
    model: Optional[str] = typer.Option(None, "--model", help="a model preset: its size is computed"),
    tokens: float = typer.Option(..., "--tokens", help="training tokens (1e9)"),
    mfu: float = typer.Option(0.35, "--mfu", help="model FLOPs utilization: share of peak reached"),
    as_json: bool = typer.Option(False, "--json", help="print JSON rows"),
) -> None:
    """Hours and dollars to train a model of this size on each catalog instance (assumptions printed)."""
    from dataclasses import asdict

    from .cost.estimate import ASSUMPTIONS

    parameters, rows = api.estimate_cost(tokens, parameters=parameters, model=model, mfu=mfu)
    if as_json:
        out.print_json(json.dumps({"parameters": parameters, "tokens": tokens, "mfu": mfu, "assumptions": ASSUMPTIONS, "estimates": [asdict(r) for r in rows]}))
        return
    table = compact_table("instance type", "accelerators", "hours", "dollars", "$/h", "as of")
    for r in rows:
        table.add_row(r.instance_type, f"{r.accelerator_count}× {r.accelerator}", "unknown" if r.hours is None else f"{r.hours:,.1f}", money(r.usd), money(r.price_per_hour), r.as_of)
    out.print(f"{parameters:.3g} parameters × {tokens:.3g} tokens, MFU {mfu:.0%}")
    out.print(table)
    out.print(Text(ASSUMPTIONS.replace("\n  ", " "), style="dim"))  # reflowed: the terminal's width decides the lines


def _mount_room_commands() -> None:
    """Commands whose code lives with their room (batch notebooks, Kubernetes manifests, nodes)."""
    from .batch.cli import batch_command
    from .dashboard.cli import dashboard_command
    from .k8s_cli import k8s_app
    from .nodes.cli import nodes_app
    from .team_cli import audit_command, team_app

    app.command("batch")(batch_command)
    app.command("audit")(audit_command)
    app.add_typer(team_app, name="team")
    app.command("dashboard")(dashboard_command)
    app.add_typer(k8s_app, name="k8s")
    app.add_typer(nodes_app, name="nodes")


_mount_room_commands()


def main(argv: Optional[List[str]] = None) -> None:
    command = typer.main.get_command(app)
    try:
        with audit.through("cli"):
            # standalone mode: click reports its own usage errors (exit 2); ours are caught here
            command.main(args=argv, prog_name="gaudi-nb", standalone_mode=True)
    except GaudiNbError as exc:
        # the message is text, not markup: "pip install 'gaudi_nb[batch]'" must print whole
        err.print(Text("error: ", style="red") + Text(str(exc)), highlight=False, soft_wrap=True)
        sys.exit(2 if isinstance(exc, (SpecError, NotAllowedError)) else 1)


if __name__ == "__main__":
    main()
