"""The node side: what runs on the machine, never on the client. The supervisor (supervisor.Agent: one agent
process per run, in its own session), liveness checks, the node CLI a client calls (node.py), and autostop
(autostop.py, autostop_service.py: the daemon that stops or terminates a provisioned machine when idle or over
budget). Nothing here imports the client's modules (store, api, views, nodes), except autostop reaching the
cloud's API through nodes.providers."""
