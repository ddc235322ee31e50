"""A Kubernetes API server stand-in on 127.0.0.1 that really runs its pods' commands (no cluster can run here).

`Cluster(root, nodes={"gaudi-a": 8, "gaudi-b": 8}, operators=())` answers on `cluster.url`, with a
kubeconfig at `cluster.kubeconfig` (context `standin`, a bearer token). Its nodes have allocatable
`habana.ai/gaudi`; `operators` names the job kinds "installed" (pytorchjob, mpijob, trainjob: their
API groups appear in discovery only then); batch/v1 Jobs, PyTorchJobs and TrainJobs are run (operators.py),
an MPIJob is only stored (its launcher would need ssh between pods). What a test does behind the client's back:
`evict(pod)`, `oom(pod)`, `delete("pods", ns, pod)`, and `drop_logs` (log streams break off).
`received` holds every body POSTed, `requests` every request line, `execs` every exec's command.
"""
from __future__ import annotations

import os
import sys
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

from .kubelet import Kubelet
from .objects import Objects
from .server import Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):  # a client that hung up is no error
            super().handle_error(request, client_address)


class Cluster:
    def __init__(self, root: Path, *, nodes: Optional[Dict[str, int]] = None, namespaces: Iterable[str] = ("default", "team"),
                 operators: Iterable[str] = (), base_env: Optional[Dict[str, str]] = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.token = "standin-token"
        self.namespaces = set(namespaces)
        self.operators = list(operators)
        self.denied: Set[Tuple[str, str]] = set()  # (verb, resource) the SelfSubjectAccessReview refuses
        self.received: List[Tuple[str, Any]] = []
        self.requests: List[str] = []
        self.execs: List[Any] = []
        self.drop_logs = threading.Event()
        self.watch_limit_s = 30.0
        self.objects = Objects()
        for ns in self.namespaces:
            self.objects.create("namespaces", "", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}, "status": {"phase": "Active"}})
        for name, cards in (nodes if nodes is not None else {"gaudi-a": 8, "gaudi-b": 8}).items():
            self.add_node(name, cards)
        env = base_env or {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
        self.kubelet = Kubelet(self.objects, self.root, env)
        handler = type("StandInHandler", (Handler,), {"cluster": self})
        self.server = _Server(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="k8s-standin")
        self.thread.start()
        self.kubeconfig = self.root / "kubeconfig"
        self.kubeconfig.write_text(self._kubeconfig())

    def add_node(self, name: str, cards: int) -> None:
        capacity = {"cpu": "160", "memory": "1056Gi", "habana.ai/gaudi": str(cards), "hugepages-2Mi": "64Gi", "pods": "110"}
        self.objects.create("nodes", "", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
                                          "status": {"capacity": capacity, "allocatable": dict(capacity), "conditions": [{"type": "Ready", "status": "True"}]}})

    def _kubeconfig(self) -> str:
        return (f"apiVersion: v1\nkind: Config\ncurrent-context: standin\n"
                f"clusters:\n- name: standin\n  cluster:\n    server: {self.url}\n"
                f"users:\n- name: standin-user\n  user:\n    token: {self.token}\n"
                f"contexts:\n- name: standin\n  context:\n    cluster: standin\n    user: standin-user\n    namespace: default\n")

    # -- what happens behind the client's back -----------------------------------------------------
    def pods(self, ns: str = "default", labels: str = "") -> List[Dict[str, Any]]:
        return self.objects.list("pods", ns, labels)[0]

    def evict(self, name: str, ns: str = "default") -> None:
        self.kubelet.end_pod(ns, name, "Evicted", "The node was low on resource: memory. Threshold quantity: 100Mi, available: 42Mi.")

    def oom(self, name: str, ns: str = "default") -> None:
        self.kubelet.end_pod(ns, name, "OOMKilled", "the container used more memory than its limit")

    def delete(self, resource: str, ns: str, name: str) -> Optional[Dict[str, Any]]:
        """A delete as the API server and its garbage collector do it: a pod's processes end; a Job's pods go with it."""
        if resource == "pods":
            return self.kubelet.delete_pod(ns, name)
        gone = self.objects.delete(resource, ns, name)
        if gone is not None:  # the garbage collector: pods owned by what went (a Job's, an operator's) go with it
            for pod in self.pods(ns):
                if any(ref.get("uid") == gone["metadata"]["uid"] for ref in pod["metadata"].get("ownerReferences") or []):
                    self.kubelet.delete_pod(ns, pod["metadata"]["name"])
        return gone

    def close(self) -> None:
        self.kubelet.close()
        self.server.shutdown()
        self.server.server_close()
