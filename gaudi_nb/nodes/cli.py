"""`gaudi-nb nodes`: attach, list, check, detach, provision and down; thin over gaudi_nb.nodes with the same keyword names."""
from __future__ import annotations

import json
import time
from typing import Any, Dict, List

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..cli_options import with_spec_options
from ..machine_spec import AttachSpec, ProvisionSpec

nodes_app = typer.Typer(help="Nodes reached over SSH and Kubernetes clusters: attach, list, check, detach; cloud machines: provision, start, down.", no_args_is_help=True)

out = Console(markup=False)  # a node's name, address or home is text, never Rich markup (cli.py's rule)
err = Console(stderr=True, markup=False)
FORCE_HELP = "an admin on a team store: act on someone else's machines (the audit trail records it)"


@nodes_app.command("attach")
@with_spec_options(model=AttachSpec)
def attach_command(
    as_json: bool = typer.Option(False, "--json", help="print the node's record as JSON"),
    **options: Any,
) -> None:
    """Attach a node over SSH (check its host key, make sure this gaudi_nb is there, record what it has) or a Kubernetes cluster (k8s://CONTEXT or k8s://CONTEXT/NAMESPACE: its API, job kinds, access and Gaudi nodes)."""
    from .attach import attach

    spec = AttachSpec.from_options(**options)
    started = time.monotonic()
    console = err if as_json else out
    record = attach(**spec.keywords(), progress=lambda message: console.print(Text(message, style="dim")))
    if as_json:
        out.print_json(json.dumps(record))
        return
    out.print(Text.assemble("attached ", (record["name"], "bold"), f" ({record['url']}) in {time.monotonic() - started:.1f} s: {describe(record)}"))
    out.print(Text(f"train there: gaudi-nb train --target {record['name']} …", style="dim"))


def describe(record: Dict[str, Any]) -> str:
    from .kube import cluster_facts, is_cluster

    if is_cluster(record):
        facts = cluster_facts(record)
        nodes = facts.get("gaudi_nodes") or []
        free = [n["free"] for n in nodes if n.get("free") is not None]
        cards = f"{record.get('device_count') or 0} Gaudi cards on {len(nodes)} node(s)" + (f", {sum(free)} free" if len(free) == len(nodes) and nodes else "")
        return f"{cards}; job kinds {', '.join(facts.get('job_kinds') or [])} (submits {facts.get('kind')}); image {facts.get('image') or 'none yet (--image)'}"
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
        devices = f"{count}× {record.get('accelerator')}" + cluster_cards(record) if count else str(record.get("accelerator") or record.get("instance_type") or "unknown")
        cluster = (record.get("resources") or {}).get("slurm")
        if cluster:  # a Slurm cluster: its partition's nodes and what each has
            devices = f"{cluster['partition']}: {len(cluster['nodes'])} nodes × {cluster.get('gres') or 'no GRES'}"
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


def cluster_cards(record: Dict[str, Any]) -> str:
    """' on 2 nodes, 15 free' for a cluster (free as last checked: gaudi-nb nodes check NAME asks again); '' for a machine."""
    gaudi = ((record.get("resources") or {}).get("kubernetes") or {}).get("gaudi_nodes") if str(record.get("url") or "").startswith("k8s://") else None
    if not gaudi:
        return ""
    free = [n.get("free") for n in gaudi]
    return f" on {len(gaudi)} nodes" + ("" if None in free else f", {sum(free)} free")


def node_cost(cost: Dict[str, Any]) -> str:
    """A provisioned machine's spend so far; '—' for a node only attached (its runs meter themselves)."""
    if cost.get("hours") is None:
        return "—"
    from ..formatting import money

    return money(cost.get("usd"))  # unknown: a footnote says where to set the price; the hours are in --json


@nodes_app.command("provision")
@with_spec_options(model=ProvisionSpec)
def provision_command(
    as_json: bool = typer.Option(False, "--json", help="print the node records as JSON"),
    **options: Any,
) -> None:
    """Create cloud machines, record them as nodes (billed while they run), wait for SSH and attach them."""
    from ..cost.billing import with_spend
    from .provision import provision

    spec = ProvisionSpec.from_options(**options)
    no_attach = not spec.attach
    started = time.monotonic()
    console = err if as_json else out
    records = provision(**spec.keywords(), progress=lambda message: console.print(Text(message, style="dim"), soft_wrap=True))
    if as_json:
        out.print_json(json.dumps(with_spend(records)))
        return
    group = records[0]["group"]
    names = [Text.assemble((r["name"], "bold"), f" ({r['instance_id']}, {r['host']})") for r in records]
    out.print(Text(f"{'running' if no_attach else 'attached'} in {time.monotonic() - started:.1f} s: ") + Text(", ").join(names))
    if no_attach:
        out.print(Text(f"attach later: gaudi-nb nodes attach {records[0]['url']} --name {records[0]['name']} --identity-file {records[0]['identity_file']}", style="dim"), soft_wrap=True)
    out.print(Text(f"billed until: gaudi-nb nodes down {group}", style="dim"))


@nodes_app.command("down")
def down_command(
    name: str = typer.Argument(..., help="a provisioned group's name (all its machines) or one machine's node name"),
    as_json: bool = typer.Option(False, "--json", help="print the node records as JSON, each with its final cost"),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Terminate provisioned machines, wait until none runs, and remove the key pair and groups gaudi_nb made once nothing uses them."""
    from ..cost.billing import with_spend
    from .provision import down

    console = err if as_json else out
    records = with_spend(down(name, progress=lambda message: console.print(Text(message, style="dim"), soft_wrap=True), force=force))
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
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Start provisioned machines that were stopped (by autostop, or in the cloud's console) again, and attach them at their new address."""
    from ..cost.billing import with_spend
    from .provision import start

    console = err if as_json else out
    records = with_spend(start(name, progress=lambda message: console.print(Text(message, style="dim"), soft_wrap=True), attach=not no_attach, force=force))
    if as_json:
        out.print_json(json.dumps(records))
        return
    for record in records:
        out.print(f"{record['name']} ({record['instance_id']}): {record.get('state')} at {record['host']}, cost so far {node_cost(record['cost'])}")


@nodes_app.command("check")
def check_command(name: str = typer.Argument(..., help="an attached node's name")) -> None:
    """Connect and run the preflight checks a launch runs: Python, gaudi_nb version, disk, free cards (a cluster: its API, job kinds, access, Gaudi nodes and free cards)."""
    from ..store import RunStore
    from .kube import is_cluster
    from .preflight import check

    record = RunStore().get_node(name)
    from .slurm import is_cluster as is_slurm

    if is_cluster(record):
        from .cluster import check as check_cluster

        checks = check_cluster(record, store=RunStore())
    elif is_slurm(record):
        from .slurm import cluster_check

        ok, lines = cluster_check(record)
        for line, fine in lines:
            out.print(Text(line, style="green" if fine else "red"), soft_wrap=True)
        if not ok:
            raise typer.Exit(1)
        return
    else:
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
