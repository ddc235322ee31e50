"""`gaudi-nb nodes down`: terminate a group's machines, release their public addresses (also those of machines the
cloud ended already), remove what gaudi_nb made for them once nothing uses it, and close their cost records."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

from ..cost import billing
from ..errors import GaudiNbError

if TYPE_CHECKING:
    from ..store import RunStore

Progress = Optional[Callable[[str], None]]


def down(name: str, progress: Progress = None, *, store: "Optional[RunStore]" = None, force: bool = False) -> List[Dict[str, Any]]:
    """Terminate a group's machines (or one machine by its node name), wait until none runs, release their public
    addresses (also those of machines the cloud ended already), remove what gaudi_nb created for them once nothing
    uses it, and close their cost records. Returns the records. Someone else's machines only with `force` (an admin's)."""
    from ..store import RunStore
    from .provision import _places, _provisioned

    say = progress or (lambda message: None)
    store = store or RunStore()
    records = _provisioned(store, name)
    for record in records:
        store.guard("down", name, record.get("owner"), force=force, what=f"machine {record['name']}")
    store.audit("down", name, detail={"machines": [r["name"] for r in records], "force": force})
    live = [r for r in records if r.get("state") != "terminated"]
    if not live:
        say(f"{name}: already terminated")
        _release_left_addresses(records, say)
        return records
    removed: List[Tuple[str, str]] = []
    for (provider_name, region), group_records in _places(live).items():
        removed.extend(_down_place(store, provider_name, region, group_records, say))
    if removed:
        say("removed " + ", ".join(f"{kind.replace('_', ' ')} {ident}" for kind, ident in removed))
    names = {r["name"] for r in records}
    return [r for r in store.list_nodes() if r["name"] in names]


def _down_place(store: "RunStore", provider_name: str, region: str, group_records: List[Dict[str, Any]], say: Callable[[str], None]) -> List[Tuple[str, str]]:
    """Down one cloud region's machines of the group: terminate, wait, release addresses, close the records, clean up."""
    from .providers import provider as provider_for
    from .providers.base import Resources
    from .provision import WAIT_TERMINATED_S, _in_the_cloud, follow

    cloud = provider_for(provider_name, region)
    # what the cloud still has: a machine autostop stopped is billed to its stop, one it terminated
    # to its end; one the cloud has forgotten is only written down here (terminating an unknown id fails)
    known = _in_the_cloud(cloud, group_records)
    group_records = [follow(store, cloud, r, known[r["instance_id"]]) if r["instance_id"] in known else r for r in group_records]
    ids = [r["instance_id"] for r in group_records if r["instance_id"] in known and r.get("state") != "terminated"]
    if ids:
        say("terminating " + ", ".join(f"{r['name']} ({r['instance_id']})" for r in group_records if r["instance_id"] in ids))
        cloud.terminate_instances(ids)
        cloud.wait_instances(ids, "terminated", timeout_s=WAIT_TERMINATED_S)
    # every machine's addresses, not only those terminated here: one ended elsewhere left its address billed
    released = cloud.release_addresses([r["instance_id"] for r in group_records], [r["name"] for r in group_records])
    if released:
        say("released " + ", ".join(released))
    ended = time.time()
    for record in group_records:
        if record.get("terminated_at") is None:
            store.update_node(record["name"], state="terminated", terminated_at=ended, cost_usd=billing.machine_spend(record, now=ended)["usd"])
    removed: List[Tuple[str, str]] = []
    seen = set()
    for record in group_records:
        stored = record.get("resources") or {}
        key = (stored.get("network") or {}).get("group"), tuple(map(tuple, stored.get("created") or []))
        if key in seen:
            continue
        seen.add(key)
        resources = Resources(key=stored.get("key"), security_group=stored.get("security_group"), placement_group=stored.get("placement_group"),
                              network=dict(stored.get("network") or {}), created=[tuple(item) for item in stored.get("created") or []])  # type: ignore[misc]
        removed.extend(cloud.cleanup(resources))
    return removed


def _release_left_addresses(records: List[Dict[str, Any]], say: Callable[[str], None]) -> None:
    """A group already recorded as terminated (nodes list saw it ended elsewhere) may still hold addresses: release them."""
    from .providers import provider as provider_for
    from .provision import _places

    for (provider_name, region), group_records in _places([r for r in records if r.get("instance_id")]).items():
        try:
            released = provider_for(provider_name, region).release_addresses([r["instance_id"] for r in group_records], [r["name"] for r in group_records])
        except GaudiNbError as exc:
            say(f"{provider_name} {region}: addresses not checked ({exc})")
            continue
        if released:
            say("released " + ", ".join(released))


__all__ = ["down"]
