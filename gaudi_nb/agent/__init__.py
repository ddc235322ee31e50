"""The node-side supervisor (supervisor.Agent: one agent process per run, in its own session) and liveness checks."""
