"""MkDocs hook: pages generated at build time from the code, so they cannot drift from it.

- ``<!-- gaudi-nb:cli-reference -->`` becomes the ``--help`` text of every
  ``gaudi-nb`` command and sub-command, taken from ``gaudi_nb.cli.app``.
- ``<!-- gaudi-nb:price-catalog -->`` becomes tables of the price catalog,
  on-premises rates and accelerator figures, read from ``gaudi_nb/cost/*.csv``.

A failure to import the CLI or read the catalog stops the build with a
message that says what is wrong: a reference page without its content is
worse than no page.
"""
from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

from mkdocs.exceptions import PluginError

ROOT = Path(__file__).resolve().parents[2]
CLI_MARKER = "<!-- gaudi-nb:cli-reference -->"
CATALOG_MARKER = "<!-- gaudi-nb:price-catalog -->"
PROG = "gaudi-nb"
# Help is rendered at a fixed width with no colour, so the page is the same on
# every machine; tests/test_docs.py runs `gaudi-nb --help` with the same settings.
HELP_ENV = {"COLUMNS": "80", "TERMINAL_WIDTH": "80", "NO_COLOR": "1", "TERM": "dumb"}


# ---------------------------------------------------------------- CLI help --


def _root_command() -> Tuple[Any, Any]:
    """The Typer app and the click command built from it."""
    try:
        import typer

        from gaudi_nb.cli import app
    except Exception as exc:  # any import failure: the page cannot be made
        raise PluginError(
            f"docs/hooks/cli_reference.py: cannot import the CLI (gaudi_nb.cli.app): "
            f"{type(exc).__name__}: {exc}. Install the package (pip install -e .) and fix the import; "
            "the CLI reference is generated from it."
        ) from exc
    return app, typer.main.get_command(app)


def _walk(command: Any, path: Tuple[str, ...] = ()) -> Iterator[Tuple[Tuple[str, ...], Any]]:
    # Duck-typed: recent typer versions carry their own copy of click.
    yield path, command
    if hasattr(command, "list_commands"):
        ctx = command.context_class(command, info_name=PROG)
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is None or getattr(sub, "hidden", False):
                continue
            yield from _walk(sub, path + (name,))


def help_text(app: Any, path: Tuple[str, ...]) -> str:
    """What `gaudi-nb PATH --help` prints, trailing spaces removed."""
    from typer.testing import CliRunner

    saved = {key: os.environ.get(key) for key in HELP_ENV}
    os.environ.update(HELP_ENV)
    try:
        result = CliRunner().invoke(app, [*path, "--help"], prog_name=PROG, env=HELP_ENV)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    if result.exit_code != 0:
        raise PluginError(f"`{PROG} {' '.join(path)} --help` failed (exit {result.exit_code}): {result.output[-500:]}")
    return "\n".join(line.rstrip() for line in result.output.strip("\n").splitlines())


def cli_reference() -> str:
    app, root = _root_command()
    parts: List[str] = []
    for path, command in _walk(root):
        title = " ".join((PROG,) + path)
        summary = (command.short_help or (command.help or "").split("\n\n")[0]).strip() if path else ""
        level = "#" * min(2 + max(len(path) - 1, 0), 4)
        parts.append(f"{level} `{title}`\n")
        if summary:
            parts.append(f"{summary}\n")
        parts.append(f"``` {{ .text .cli-help }}\n{help_text(app, path)}\n```\n")
    return "\n".join(parts)


# ---------------------------------------------------------------- catalog --


def _read_csv(name: str) -> List[Dict[str, str]]:
    path = ROOT / "gaudi_nb" / "cost" / name
    try:
        with path.open(newline="") as handle:
            return list(csv.DictReader(handle))
    except OSError as exc:
        raise PluginError(
            f"docs/hooks/cli_reference.py: cannot read the price catalog {path}: {exc.strerror}. "
            "The cost page is rendered from it."
        ) from exc


def _cell(text: str) -> str:
    text = (text or "").strip().replace("|", "\\|").replace("\n", " ")
    # Bare URLs become autolinks; a closing parenthesis belongs to the prose.
    return re.sub(r"(https?://[^\s)]+)", r"<\1>", text)


def _money(text: str) -> str:
    return f"${float(text):,.2f}" if (text or "").strip() else "unknown"


def _table(headers: List[str], rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _sources(rows: List[Dict[str, str]], key: str) -> str:
    """Each row's source and notes as a list under its table: the tables stay narrow."""
    lines = []
    for r in rows:
        when = f" (as of {r['as_of']})" if r.get("as_of") else ""
        notes = f" — {_cell(r['notes'])}" if (r.get("notes") or "").strip() else ""
        lines.append(f"- **`{r[key]}`**{when}: {_cell(r['source'])}{notes}")
    return "\n".join(lines) + "\n"


def price_catalog() -> str:
    try:
        from gaudi_nb.cost.catalog import read_onprem
    except Exception as exc:
        raise PluginError(f"docs/hooks/cli_reference.py: cannot import gaudi_nb.cost.catalog: {exc}") from exc

    cloud_rows = _read_csv("catalog.csv")
    cloud = _table(
        ["instance type", "provider", "region", "accelerators", "on demand / node-hour", "spot", "as of"],
        [
            [
                f"`{r['instance_type']}`",
                _cell(r["provider"]),
                _cell(r["region"]) or "any",
                f"{r['accelerator_count']}× {_cell(r['accelerator'])}",
                _money(r["on_demand_per_hour"]),
                _money(r["spot_per_hour"]) if (r.get("spot_per_hour") or "").strip() else "—",
                _cell(r["as_of"]),
            ]
            for r in cloud_rows
        ],
    )
    onprem_csv = _read_csv("onprem.csv")
    # the rate comes from the catalog itself, so the page shows what runs are charged
    rates = {p.instance_type: p.on_demand_per_hour for p in read_onprem()}
    onprem_rows = []
    for r in onprem_csv:
        rate = rates[r["instance_type"]]
        onprem_rows.append(
            [
                f"`{r['instance_type']}`",
                f"{r['accelerator_count']}× {_cell(r['accelerator'])}",
                _money(r["purchase_usd"]),
                _cell(r["years"]),
                f"{r['accelerator_count']} × {r['accelerator_power_w']} W + {r['host_power_w']} W",
                f"${float(r['usd_per_kwh']):.2f}",
                f"**${rate:,.2f}**",
            ]
        )
    onprem = _table(
        ["instance type", "accelerators", "purchase", "years", "power", "per kWh", "= per node-hour"], onprem_rows
    )
    accelerator_rows = _read_csv("accelerators.csv")
    accelerators = _table(
        ["accelerator", "peak dense BF16 TFLOP/s", "memory GB", "power W"],
        [
            [
                _cell(r["accelerator"]),
                _cell(r["peak_bf16_tflops"]) or "unknown",
                _cell(r["memory_gb"]) or "unknown",
                _cell(r["power_w"]) or "unknown",
            ]
            for r in accelerator_rows
        ],
    )
    return (
        "### Cloud instances\n\nFrom `gaudi_nb/cost/catalog.csv`.\n\n" + cloud
        + "\nSources:\n\n" + _sources(cloud_rows, "instance_type")
        + "\n### On-premises nodes\n\nFrom `gaudi_nb/cost/onprem.csv`; the last column is computed "
        "with the formula above.\n\n" + onprem
        + "\nSources:\n\n" + _sources(onprem_csv, "instance_type")
        + "\n### Accelerators\n\nFrom `gaudi_nb/cost/accelerators.csv`: the peaks the estimates use.\n\n"
        + accelerators + "\nSources:\n\n" + _sources(accelerator_rows, "accelerator")
    )


# ------------------------------------------------------------------ hook --


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference())
    if CATALOG_MARKER in markdown:
        markdown = markdown.replace(CATALOG_MARKER, price_catalog())
    return markdown
