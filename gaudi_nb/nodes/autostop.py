"""Autostop from the client: write its settings on a provisioned node and start it there over the links.

The daemon itself runs on the machine (gaudi_nb.agent.autostop); this module only sends it its settings.
"""
from __future__ import annotations

import json
import shlex
from typing import Any, Dict

from ..agent.autostop import MARKER, AutostopConfig, config_path
from ..errors import GaudiNbError, SpecError


def start_on_node(record: Dict[str, Any], config: "AutostopConfig | Dict[str, Any]", *, reboot: bool = True, timeout_s: float = 120.0) -> Dict[str, Any]:
    """Write autostop's config on the node and start it there, detached and again at every boot.

    `record`: the node's store record (user, host, port, identity_file, jump, python, home).
    `config`: an AutostopConfig or its dict (provider, region, instance_id, launched_at, action,
    idle_minutes, budget_usd, price_per_hour, ...); `home` defaults to the record's.
    `reboot`: also make it start at boot (a systemd unit, else an @reboot crontab line).
    Returns the node's answer: {pid, started, survives_reboot, how, note, log}.
    """
    from .link import links

    data = config.to_dict() if isinstance(config, AutostopConfig) else dict(config)
    home = data.get("home") or record.get("home")
    if not home:
        raise SpecError(f"node {record.get('name')} has no home in its record: attach it again")
    data["home"] = home
    data.setdefault("node", record.get("name"))
    AutostopConfig.from_dict(data)  # a bad setting stops here, not on the node
    target = config_path(home)
    command = " ".join(
        [f"GAUDI_NB_HOME={shlex.quote(home)}", shlex.quote(record.get("python") or "python3"), "-m", MARKER, "start", "--config", shlex.quote(str(target)), "--config-stdin", *([] if reboot else ["--no-reboot"])]
    )
    text = json.dumps(data, indent=1)
    status, stdout, stderr = links().run(record, command, timeout=timeout_s, input=text)
    lines = [line for line in stdout.splitlines() if line.strip().startswith("{")]
    if status != 0 or not lines:
        last = next((line for line in reversed((stderr or stdout).splitlines()) if line.strip()), f"exit status {status}")
        raise GaudiNbError(f"autostop could not be started on node {record.get('name')}: {last.strip()[:300]}")
    answer: Dict[str, Any] = json.loads(lines[-1])
    return answer

