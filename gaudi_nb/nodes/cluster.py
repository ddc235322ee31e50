"""Attach a Kubernetes cluster (`k8s://CONTEXT[/NAMESPACE]`) as a node record runs name with --target, and check it.

Attaching asks the cluster, through the kubeconfig's context: that the API answers, that the namespace
exists, which job kinds are installed (API discovery), each node's allocatable `habana.ai/gaudi`, and
(SelfSubjectAccessReview) whether this user may create the kind gaudi_nb would submit, read pod logs
and exec into pods (a stop goes through the run's node 0 pod). Nothing is recorded when a check fails.
The record keeps the facts in `resources.kubernetes`; `price_per_hour` is per node.
"""
from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import urlparse

from ..errors import NotFoundError, SpecError
from .kube import JOB_KINDS, Cluster, cluster_facts, of_record
from .preflight import NodeCheck

if TYPE_CHECKING:
    from ..store import RunStore

_URL = re.compile(r"^k8s://(?P<context>[^/\s]+)(?:/(?P<namespace>[a-z0-9]([-a-z0-9]*[a-z0-9])?))?/?$")


def parse_cluster_url(url: str) -> Tuple[str, Optional[str]]:
    """k8s://CONTEXT[/NAMESPACE] → (context, namespace or None); ValueError naming the form."""
    match = _URL.match(url.strip())
    if not match:
        raise ValueError(f"{url}: a cluster is k8s://CONTEXT or k8s://CONTEXT/NAMESPACE (a context from kubectl config get-contexts, a namespace in lower case)")
    return match["context"], match["namespace"]


def inspect(cluster: Cluster) -> Dict[str, Any]:
    """What attach checks, as facts; SpecError (one line, what to do) on the first that fails."""
    version = cluster.version()
    if not cluster.namespace_exists():
        raise SpecError(f"namespace '{cluster.namespace}' does not exist in context {cluster.context}: kubectl create namespace {cluster.namespace}, or name another in k8s://{cluster.context}/NAMESPACE")
    kinds = cluster.job_kinds()
    kind = kinds[0]
    group, resource = next((g, r) for k, g, _, r in JOB_KINDS if k == kind)
    if not cluster.may("create", group, resource):
        raise SpecError(f"user {cluster.user or '(this kubeconfig)'} may not create {resource} in namespace {cluster.namespace}: ask the cluster's admin for a Role that allows it, or attach another namespace")
    nodes = cluster.gaudi_nodes()
    return {"version": version, "job_kinds": kinds, "kind": kind, "gaudi_nodes": nodes,
            "may_log": cluster.may("get", "", "pods", "log"), "may_exec": cluster.may("create", "", "pods", "exec")}


def attach_cluster(url: str, *, name: Optional[str], kubeconfig: Optional[str] = None, image: Optional[str] = None, storage_class: Optional[str] = None,
                   price_per_hour: Optional[float] = None, store: "Optional[RunStore]" = None, progress: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """Attach the cluster at `url` as `name` and return its record (attaching the same name again refreshes it)."""
    from ..store import RunStore
    from .attach import check_name

    context, namespace = parse_cluster_url(url)
    name = check_name(name or re.sub(r"[^\w.\-]", "-", context))
    store = store or RunStore()
    say = progress or (lambda message: None)
    cluster = Cluster(context, namespace, kubeconfig)
    say(f"asking {cluster.server} (context {cluster.context}, namespace {cluster.namespace})")
    facts = inspect(cluster)
    if not image:
        say("no --image: runs there use Intel's image and install this client's gaudi_nb build in each pod at start (the image must have gaudi_nb's dependencies); attach again with --image IMAGE for one with gaudi_nb (infra/docker builds one)")
    if not facts["gaudi_nodes"]:
        say("no node has allocatable habana.ai/gaudi: runs will wait as pending until one has (Intel's device plugin or Base Operator adds it)")
    server = urlparse(cluster.server)
    record = {
        "url": f"k8s://{cluster.context}/{cluster.namespace}", "user": cluster.user or "kubeconfig", "host": server.hostname or cluster.server,
        "port": server.port or (443 if server.scheme == "https" else 80), "identity_file": None, "jump": None, "python": None, "home": None,
        "accelerator": "hpu", "device_count": sum(n["cards"] for n in facts["gaudi_nodes"]), "gaudi_nb_version": None, "attached_at": time.time(),
        "price_per_hour": price_per_hour, "price_source": "--price-per-hour (per node)" if price_per_hour is not None else None,
        "resources": {"kubernetes": {**facts, "context": cluster.context, "namespace": cluster.namespace, "kubeconfig": kubeconfig, "server": cluster.server,
                                     "image": image, "storage_class": storage_class, "checked_at": time.time()}},
    }
    try:
        existing: Optional[Dict[str, Any]] = store.get_node(name)
    except NotFoundError:
        existing = None
    if existing is not None:
        if existing["url"] != record["url"]:
            raise SpecError(f"a node named '{name}' is attached already at {existing['url']}: pick another --name, or gaudi-nb nodes detach {name} first")
        return store.update_node(name, **record)
    return store.add_node({"name": name, **record})


def check(record: Dict[str, Any], store: "Optional[RunStore]" = None) -> List[NodeCheck]:
    """`gaudi-nb nodes check NAME` for a cluster: the attach checks again, and each Gaudi node's free cards now
    (written to the record with `store`, so the Fleet page and the sidebar show them)."""
    facts = cluster_facts(record)
    again = f"gaudi-nb nodes attach {record['url']} --name {record['name']}"
    try:
        cluster = of_record(record)
        found = inspect(cluster)
    except SpecError as exc:
        return [NodeCheck("cluster", False, str(exc), again)]
    if store is not None:
        store.update_node(record["name"], device_count=sum(n["cards"] for n in found["gaudi_nodes"]),
                          resources={**(record.get("resources") or {}), "kubernetes": {**facts, **found, "checked_at": time.time()}})
    checks = [NodeCheck("API server", True, f"{cluster.server} ({found['version']})"),
              NodeCheck("namespace", True, cluster.namespace),
              NodeCheck("job kinds", True, ", ".join(found["job_kinds"]) + f" (submits {found['kind']})"),
              NodeCheck("pod logs", found["may_log"], "may read" if found["may_log"] else "may not read pods/log", "a Role with get on pods/log: runs are followed through it"),
              NodeCheck("pod exec", found["may_exec"], "may exec" if found["may_exec"] else "may not create pods/exec", "a Role with create on pods/exec: stop reaches the run's agent through it")]
    nodes = found["gaudi_nodes"]
    checks.append(NodeCheck("Gaudi nodes", bool(nodes), f"{len(nodes)} with habana.ai/gaudi" if nodes else "none has allocatable habana.ai/gaudi",
                            "install Intel's device plugin or the Habana Base Operator on the Gaudi nodes"))
    for node in nodes:
        free = "free unknown (may not list pods)" if node["free"] is None else f"{node['free']} free"
        checks.append(NodeCheck(f"  {node['name']}", True, f"{node['cards']} cards, {free}"))
    if facts.get("storage_class") is None:
        checks.append(NodeCheck("shared volume", True, "the cluster's default storage class (give --storage-class with a ReadWriteMany class for runs across nodes)"))
    return checks
