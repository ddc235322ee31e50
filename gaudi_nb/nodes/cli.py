"""`gaudi-nb nodes`: attach, list, check and detach nodes; thin over gaudi_nb.nodes with the same keyword names."""
from __future__ import annotations

import json
import time
from typing import Any, Dict, List, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

nodes_app = typer.Typer(help="Nodes reached over SSH: attach, list, check, detach.", no_args_is_help=True)

out = Console()
err = Console(stderr=True)


@nodes_app.command("attach")
def attach_command(
    url: str = typer.Argument(..., metavar="ssh://USER@HOST[:PORT]", help="the node's SSH address; HOST may be a Host from ~/.ssh/config"),
    name: Optional[str] = typer.Option(None, "--name", help="what runs call the node (--target NAME); default: its host name"),
    identity_file: Optional[str] = typer.Option(None, "--identity-file", help="private key to log in with (default: ~/.ssh keys and the SSH agent)"),
    jump: Optional[str] = typer.Option(None, "--jump", help="bastion to go through: ssh://USER@BASTION[:PORT]"),
    python: Optional[str] = typer.Option(None, "--python", help="an interpreter on the node that has this gaudi_nb version; default: install it into ~/.gaudi_nb/env there"),
    trust_new_host: bool = typer.Option(False, "--trust-new-host", help="record the host key of a node not yet in ~/.ssh/known_hosts"),
    as_json: bool = typer.Option(False, "--json", help="print the node's record as JSON"),
) -> None:
    """Attach a node over SSH: check its host key, make sure this gaudi_nb is there, record what it has."""
    from .attach import attach

    started = time.monotonic()
    console = err if as_json else out
    record = attach(url, name=name, identity_file=identity_file, jump=jump, python=python, trust_new_host=trust_new_host,
                    progress=lambda message: console.print(Text(message, style="dim")))
    if as_json:
        out.print_json(json.dumps(record))
        return
    out.print(f"attached [bold]{record['name']}[/] ({record['url']}) in {time.monotonic() - started:.1f} s: {describe(record)}")
    out.print(Text(f"train there: gaudi-nb train --target {record['name']} …", style="dim"))


def describe(record: Dict[str, Any]) -> str:
    accelerator = record.get("accelerator") or "unknown"
    count = record.get("device_count")
    devices = f"{count}× {accelerator}" if count else accelerator
    versions = ", ".join(f"{what} {record[key]}" for what, key in (("driver", "driver_version"), ("firmware", "firmware_version")) if record.get(key))
    return f"{devices}{' (' + versions + ')' if versions else ''}, gaudi_nb {record.get('gaudi_nb_version')} at {record.get('python')}"


@nodes_app.command("list")
def list_command(as_json: bool = typer.Option(False, "--json", help="print the records as JSON")) -> None:
    """The attached nodes, from the store (a shared store shows the team's)."""
    from .attach import nodes

    records = nodes()
    if as_json:
        out.print_json(json.dumps(records))
        return
    if not records:
        out.print("no nodes attached: gaudi-nb nodes attach ssh://USER@HOST --name NAME")
        return
    table = Table(box=None, pad_edge=False, collapse_padding=True, header_style="bold")
    for column in ("name", "address", "devices", "gaudi_nb", "owner", "attached"):
        table.add_column(column, no_wrap=True, overflow="ellipsis")
    for record in records:
        count = record.get("device_count")
        table.add_row(
            record["name"],
            record["url"] + (f" via {record['jump']}" if record.get("jump") else ""),
            f"{count}× {record.get('accelerator')}" if count else str(record.get("accelerator") or "unknown"),
            str(record.get("gaudi_nb_version") or "?"),
            str(record.get("owner") or ""),
            time.strftime("%Y-%m-%d %H:%M", time.localtime(record["attached_at"])),
        )
    out.print(table)


@nodes_app.command("check")
def check_command(name: str = typer.Argument(..., help="an attached node's name")) -> None:
    """Connect and run the preflight checks a launch runs: Python, gaudi_nb version, disk, free cards."""
    from ..store import RunStore
    from .preflight import check

    record = RunStore().get_node(name)
    checks = check(record)
    for item in checks:
        out.print(Text(item.line(), style="green" if item.ok else "red"), soft_wrap=True)
    failed: List[Any] = [item for item in checks if not item.ok]
    if failed:
        raise typer.Exit(1)


@nodes_app.command("detach")
def detach_command(name: str = typer.Argument(..., help="an attached node's name")) -> None:
    """Forget a node. Nothing on the node is touched (its env and runs stay)."""
    from .attach import detach

    record = detach(name)
    out.print(f"detached {record['name']} ({record['url']})")
