"""The node-side supervisor: one agent process per run, in its own session."""
from ..rundir import request_stop, stop_reason
from .supervisor import Agent

__all__ = ["Agent", "request_stop", "stop_reason"]
