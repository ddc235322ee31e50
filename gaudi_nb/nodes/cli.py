"""`gaudi-nb nodes`: attach, list, check, detach, provision and down; thin over gaudi_nb.nodes with the same keyword names."""
from __future__ import annotations

import json
import time
from typing import Any, Dict, List, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

nodes_app = typer.Typer(help="Nodes reached over SSH: attach, list, check, detach; cloud machines: provision, start, down.", no_args_is_help=True)

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
def list_command(
    show_all: bool = typer.Option(False, "--all", help="also the terminated machines (kept for their cost history)"),
    refresh_states: bool = typer.Option(True, "--refresh/--no-refresh", help="ask the clouds for the provisioned machines' states first (autostop may have stopped one)"),
    as_json: bool = typer.Option(False, "--json", help="print the records as JSON, each with its cost"),
) -> None:
    """The nodes, from the store (a shared store shows the team's): attached ones, and provisioned machines with their state and cost."""
    from ..cost.billing import with_spend
    from .attach import nodes
    from .provision import refresh

    records = nodes()
    if refresh_states:
        records = refresh(records, progress=lambda message: err.print(Text(message, style="dim"), soft_wrap=True))
    records = with_spend([r for r in records if show_all or r.get("state") != "terminated"])
    if as_json:
        out.print_json(json.dumps(records))
        return
    if not records:
        out.print("no nodes: gaudi-nb nodes attach ssh://USER@HOST --name NAME, or gaudi-nb nodes provision aws --instance-type dl1.24xlarge")
        return
    table = Table(box=None, pad_edge=False, collapse_padding=True, header_style="bold")
    # names and states whole (they are what a user types next); the address and the rest may shorten
    table.add_column("name", no_wrap=True, min_width=max(len(r["name"]) for r in records))
    for column in ("address", "devices"):
        table.add_column(column, no_wrap=True, overflow="ellipsis")
    table.add_column("state", no_wrap=True, min_width=max(len(str(r.get("state") or "attached")) for r in records))
    # owners only on a shared store, where they differ: an 80-column terminal has no room for a constant
    owners = len({r.get("owner") for r in records}) > 1
    for column in ("cost", "owner", "since") if owners else ("cost", "since"):
        table.add_column(column, no_wrap=True, overflow="ellipsis")
    for record in records:
        count = record.get("device_count")
        devices = f"{count}× {record.get('accelerator')}" if count else str(record.get("accelerator") or record.get("instance_type") or "unknown")
        address = f"{record['user']}@{record['host']}" if record.get("instance_id") else record["url"]  # the instance id is in --json
        row = [
            record["name"],
            address + (f" via {record['jump']}" if record.get("jump") else ""),
            devices,
            str(record.get("state") or "attached"),
            node_cost(record["cost"]),
            *([str(record.get("owner") or "")] if owners else []),
            time.strftime("%m-%d %H:%M", time.localtime(record.get("launched_at") or record["attached_at"])),
        ]
        table.add_row(*row)
    out.print(table)
    unknown = [r["name"] for r in records if r.get("provider") and r["cost"]["usd"] is None]
    if unknown:
        from ..cost.catalog import user_prices_path

        out.print(Text(f"cost unknown for {', '.join(unknown)}: set the instance type's price in {user_prices_path()}", style="dim"))


def node_cost(cost: Dict[str, Any]) -> str:
    """A provisioned machine's spend so far; '—' for a node only attached (its runs meter themselves)."""
    if cost.get("hours") is None:
        return "—"
    from ..formatting import money

    return money(cost.get("usd"))  # unknown: a footnote says where to set the price; the hours are in --json


@nodes_app.command("provision")
def provision_command(
    provider: str = typer.Argument(..., metavar="PROVIDER", help="aws or ibm"),
    instance_type: str = typer.Option(..., "--instance-type", help="from the price catalog: dl1.24xlarge (AWS), gx3d-160x1792x8gaudi3 (IBM)"),
    count: int = typer.Option(1, "--count", min=1, help="how many machines (the group's machines are NAME-0, NAME-1, ...)"),
    region: Optional[str] = typer.Option(None, "--region", help="default: the first region the price catalog lists for the type"),
    image: Optional[str] = typer.Option(None, "--image", help="image id; default: the newest Habana/Gaudi deep learning image"),
    name: Optional[str] = typer.Option(None, "--name", help="the group's name (gaudi-nb nodes down NAME); default: PROVIDER-xxxxxx"),
    ssh_from: Optional[str] = typer.Option(None, "--ssh-from", metavar="CIDR", help="where SSH is admitted from; default: this machine's public address"),
    spot: bool = typer.Option(False, "--spot", help="spot machines: cheaper, and the cloud may take them back"),
    idle_minutes: Optional[float] = typer.Option(None, "--idle-minutes", help="autostop: stop a machine after this many idle minutes"),
    budget_usd: Optional[float] = typer.Option(None, "--budget-usd", help="autostop: stop a machine when its spend reaches this"),
    autostop_action: str = typer.Option("stop", "--autostop-action", help="what autostop does: stop (the disk is kept) or terminate"),
    no_attach: bool = typer.Option(False, "--no-attach", help="return once the machines run (do not wait for SSH or attach)"),
    as_json: bool = typer.Option(False, "--json", help="print the node records as JSON"),
) -> None:
    """Create cloud machines, record them as nodes (billed while they run), wait for SSH and attach them."""
    from ..cost.billing import with_spend
    from .provision import provision

    started = time.monotonic()
    console = err if as_json else out
    records = provision(provider, instance_type, count=count, region=region, image=image, name=name, ssh_from=ssh_from, spot=spot,
                        idle_minutes=idle_minutes, budget_usd=budget_usd, attach=not no_attach, autostop_action=autostop_action,
                        progress=lambda message: console.print(Text(message, style="dim"), soft_wrap=True))
    if as_json:
        out.print_json(json.dumps(with_spend(records)))
        return
    group = records[0]["group"]
    out.print(f"{'running' if no_attach else 'attached'} in {time.monotonic() - started:.1f} s: " + ", ".join(f"[bold]{r['name']}[/] ({r['instance_id']}, {r['host']})" for r in records))
    if no_attach:
        out.print(Text(f"attach later: gaudi-nb nodes attach {records[0]['url']} --name {records[0]['name']} --identity-file {records[0]['identity_file']}", style="dim"), soft_wrap=True)
    out.print(Text(f"billed until: gaudi-nb nodes down {group}", style="dim"))


@nodes_app.command("down")
def down_command(
    name: str = typer.Argument(..., help="a provisioned group's name (all its machines) or one machine's node name"),
    as_json: bool = typer.Option(False, "--json", help="print the node records as JSON, each with its final cost"),
) -> None:
    """Terminate provisioned machines, wait until none runs, and remove the key pair and groups gaudi_nb made once nothing uses them."""
    from ..cost.billing import with_spend
    from .provision import down

    console = err if as_json else out
    records = with_spend(down(name, progress=lambda message: console.print(Text(message, style="dim"), soft_wrap=True)))
    if as_json:
        out.print_json(json.dumps(records))
        return
    for record in records:
        out.print(f"{record['name']} ({record['instance_id']}): {record.get('state')}, cost {node_cost(record['cost'])}")


@nodes_app.command("start")
def start_command(
    name: str = typer.Argument(..., help="a provisioned group's name (all its stopped machines) or one machine's node name"),
    no_attach: bool = typer.Option(False, "--no-attach", help="return once the machines run (do not wait for SSH or attach)"),
    as_json: bool = typer.Option(False, "--json", help="print the node records as JSON, each with its cost"),
) -> None:
    """Start provisioned machines that were stopped (by autostop, or in the cloud's console) again, and attach them at their new address."""
    from ..cost.billing import with_spend
    from .provision import start

    console = err if as_json else out
    records = with_spend(start(name, progress=lambda message: console.print(Text(message, style="dim"), soft_wrap=True), attach=not no_attach))
    if as_json:
        out.print_json(json.dumps(records))
        return
    for record in records:
        out.print(f"{record['name']} ({record['instance_id']}): {record.get('state')} at {record['host']}, cost so far {node_cost(record['cost'])}")


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
