"""The node-side supervisor: one agent process per run, in its own session."""
from .supervisor import Agent, request_stop, stop_reason

__all__ = ["Agent", "request_stop", "stop_reason"]
