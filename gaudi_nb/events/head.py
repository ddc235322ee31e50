"""What every event and every reader of runs shares, without the contract's classes (so a room that only
writes or reads events does not load pydantic): the stream's version, the common head, the run states."""
from __future__ import annotations

# The version every event's `v` carries: the stream's format. A class's `version` changes with its own fields.
SCHEMA_VERSION = 1

# Every event has these keys; the rest depends on the type (gaudi_nb/events/contract.py).
COMMON_KEYS = ("v", "type", "t", "run_id", "node", "rank")

# The run states (docs/architecture.md): a run is active until one of the terminal ones.
# `lost`: the agent stopped beating and its process is gone (see agent/liveness.py).
ACTIVE_STATUSES = ("pending", "starting", "running", "stopping")
TERMINAL_STATUSES = ("succeeded", "failed", "stopped", "budget_exceeded", "lost")
