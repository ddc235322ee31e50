"""A Kubernetes cluster through the official `kubernetes` client: connect from a kubeconfig context, and the reads
and writes gaudi_nb makes (discovery, nodes and their free Gaudi cards, access reviews, objects, pods, logs, exec).

Bodies travel as plain dicts (`_preload_content=False`): what gaudi_nb submits is built as dicts, and a
dict read back does not fail on a field a newer API server adds. The client library does what is hard to
get right: kubeconfig (exec plugins for EKS, OpenShift tokens, client certificates), watch streams, and
exec over WebSocket. A cluster that does not answer raises UnreachableError, as an SSH node does.
"""
from __future__ import annotations

import json
from typing import Any, Dict, Iterator, List, Optional, Tuple

from ..errors import SpecError
from .ssh import UnreachableError

GAUDI = "habana.ai/gaudi"
# the job kinds gaudi_nb can submit, in the order it prefers them, with where discovery finds them
JOB_KINDS: Tuple[Tuple[str, str, str, str], ...] = (
    ("trainjob", "trainer.kubeflow.org", "v1alpha1", "trainjobs"),
    ("pytorchjob", "kubeflow.org", "v1", "pytorchjobs"),
    ("mpijob", "kubeflow.org", "v2beta1", "mpijobs"),
    ("job", "batch", "v1", "jobs"),
)
PATHS = {"Secret": ("", "v1", "secrets"), "ConfigMap": ("", "v1", "configmaps"), "PersistentVolumeClaim": ("", "v1", "persistentvolumeclaims"),
         "Service": ("", "v1", "services"), "Job": ("batch", "v1", "jobs"), "PyTorchJob": ("kubeflow.org", "v1", "pytorchjobs"),
         "MPIJob": ("kubeflow.org", "v2beta1", "mpijobs"), "TrainJob": ("trainer.kubeflow.org", "v1alpha1", "trainjobs"),
         "TrainingRuntime": ("trainer.kubeflow.org", "v1alpha1", "trainingruntimes")}


def _kubernetes() -> Any:
    try:
        import kubernetes
    except ImportError:
        raise SpecError("a Kubernetes cluster needs the kubernetes client: pip install 'gaudi_nb[k8s]'") from None
    return kubernetes


class Cluster:
    """One kubeconfig context and namespace: the API calls gaudi_nb makes, each answering dicts."""

    def __init__(self, context: Optional[str], namespace: Optional[str] = None, kubeconfig: Optional[str] = None) -> None:
        kubernetes = _kubernetes()
        self.kubeconfig, self.context = kubeconfig, context
        try:
            contexts, current = kubernetes.config.list_kube_config_contexts(config_file=kubeconfig)
        except Exception as exc:  # no file, not YAML, no contexts
            raise SpecError(f"kubeconfig {kubeconfig or '~/.kube/config'}: {exc}: give --kubeconfig PATH (kubectl config view shows yours)") from None
        chosen = next((c for c in contexts if c["name"] == context), None) if context else current
        if chosen is None:
            names = ", ".join(c["name"] for c in contexts)
            raise SpecError(f"no context '{context}' in {kubeconfig or '~/.kube/config'}: use one of {names} (kubectl config get-contexts)")
        self.context = chosen["name"]
        self.user = str(chosen["context"].get("user") or "")
        self.namespace = namespace or chosen["context"].get("namespace") or "default"
        self.api = kubernetes.config.new_client_from_config(config_file=kubeconfig, context=self.context)
        self.server = self.api.configuration.host

    # -- plumbing ----------------------------------------------------------------------------
    def _call(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        kubernetes = _kubernetes()
        try:
            response = method(*args, _preload_content=False, _request_timeout=kwargs.pop("_timeout", 30), **kwargs)
        except kubernetes.client.exceptions.ApiException as exc:
            raise ApiError(exc.status, _message(exc)) from None
        except Exception as exc:  # refused, timed out, a name that does not resolve: urllib3's errors
            raise UnreachableError(f"the cluster at {self.server} does not answer: {type(exc).__name__}: {exc}") from None
        return response

    def _json(self, method: Any, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        return json.loads(self._call(method, *args, **kwargs).data or b"{}")  # type: ignore[no-any-return]

    @property
    def core(self) -> Any:
        return _kubernetes().client.CoreV1Api(self.api)

    @property
    def custom(self) -> Any:
        return _kubernetes().client.CustomObjectsApi(self.api)

    # -- what attach asks -----------------------------------------------------------------------
    def version(self) -> str:
        return str(self._json(_kubernetes().client.VersionApi(self.api).get_code).get("gitVersion"))

    def namespace_exists(self) -> bool:
        try:
            self._json(self.core.read_namespace, self.namespace)
            return True
        except ApiError as exc:
            if exc.status == 404:
                return False
            if exc.status == 403:
                return True  # a user who may not read namespaces may still work in theirs
            raise

    def job_kinds(self) -> List[str]:
        """The job kinds API discovery finds installed, in gaudi_nb's order of preference (job: always)."""
        groups = self._json(_kubernetes().client.ApisApi(self.api).get_api_versions).get("groups") or []
        have = {(g["name"], v["version"]) for g in groups for v in g.get("versions") or []}
        return [kind for kind, group, version, _ in JOB_KINDS if (group, version) in have]

    def may(self, verb: str, group: str, resource: str, subresource: str = "") -> bool:
        """SelfSubjectAccessReview: may this user do it in the namespace?"""
        review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                  "spec": {"resourceAttributes": {"namespace": self.namespace, "verb": verb, "group": group, "resource": resource, "subresource": subresource}}}
        answer = self._json(_kubernetes().client.AuthorizationV1Api(self.api).create_self_subject_access_review, review)
        return bool((answer.get("status") or {}).get("allowed"))

    def gaudi_nodes(self) -> List[Dict[str, Any]]:
        """Each node with allocatable Gaudi cards: name, cards, free (cards no running or pending pod requests;
        None when this user may not list pods across namespaces)."""
        nodes = [n for n in self._json(self.core.list_node).get("items") or [] if int((n.get("status") or {}).get("allocatable", {}).get(GAUDI) or 0) > 0]
        try:
            pods = self._json(self.core.list_pod_for_all_namespaces).get("items") or []
        except ApiError:
            pods = None
        found = []
        for node in nodes:
            name, cards = node["metadata"]["name"], int(node["status"]["allocatable"][GAUDI])
            used = None if pods is None else sum(cards_of(p) for p in pods if (p.get("spec") or {}).get("nodeName") == name and (p.get("status") or {}).get("phase") in ("Pending", "Running"))
            found.append({"name": name, "cards": cards, "free": None if used is None else cards - used})
        return found

    # -- objects ---------------------------------------------------------------------------------
    def create(self, obj: Dict[str, Any]) -> Dict[str, Any]:
        group, version, plural = PATHS[obj["kind"]]
        if not group:
            method = getattr(self.core, "create_namespaced_" + {"persistentvolumeclaims": "persistent_volume_claim", "configmaps": "config_map"}.get(plural, plural.rstrip("s")))
            return self._json(method, self.namespace, obj)
        return self._json(self.custom.create_namespaced_custom_object, group, version, self.namespace, plural, obj)

    def delete(self, kind: str, name: str) -> bool:
        """Delete an object and what it owns (Background propagation); False if it was gone already."""
        group, version, plural = PATHS[kind]
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        try:
            if not group:
                method = getattr(self.core, "delete_namespaced_" + {"configmaps": "config_map"}.get(plural, plural.rstrip("s")))
                self._call(method, name, self.namespace, body=body)
            else:
                self._call(self.custom.delete_namespaced_custom_object, group, version, self.namespace, plural, name, body=body)
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def pods(self, labels: str) -> List[Dict[str, Any]]:
        return self._json(self.core.list_namespaced_pod, self.namespace, label_selector=labels).get("items") or []  # type: ignore[no-any-return]

    def events_of(self, pod: str) -> List[Dict[str, Any]]:
        return self._json(self.core.list_namespaced_event, self.namespace, field_selector=f"involvedObject.name={pod}").get("items") or []  # type: ignore[no-any-return]

    def log(self, pod: str, container: str, *, follow: bool, read_timeout: float = 60.0) -> Iterator[bytes]:
        """The container's log from its start; with follow, as it grows, until the container ends (or the stream drops)."""
        response = self._call(self.core.read_namespaced_pod_log, pod, self.namespace, container=container, follow=follow, _timeout=(10, read_timeout))
        try:
            yield from response.stream(65536)
        finally:
            response.release_conn()

    def exec(self, pod: str, container: str, argv: List[str], timeout: float = 120.0) -> Tuple[int, str, str]:
        """Run argv in the container (pods/exec over WebSocket): exit status, stdout, stderr."""
        kubernetes = _kubernetes()
        try:
            client = kubernetes.stream.stream(self.core.connect_get_namespaced_pod_exec, pod, self.namespace, container=container, command=argv,
                                              stderr=True, stdin=False, stdout=True, tty=False, _preload_content=False)
            client.run_forever(timeout=timeout)
            out, err = client.read_stdout(), client.read_stderr()
            return int(client.returncode or 0), out, err
        except kubernetes.client.exceptions.ApiException as exc:
            raise ApiError(exc.status, _message(exc)) from None
        except Exception as exc:
            raise UnreachableError(f"exec in pod {pod}: {type(exc).__name__}: {exc}") from None


class ApiError(SpecError):
    """The API server refused a request: its status code and its Status message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _message(exc: Any) -> str:
    try:
        return str(json.loads(exc.body).get("message") or exc.reason)
    except (TypeError, ValueError):
        return f"{exc.status} {exc.reason}"


def cards_of(pod: Dict[str, Any]) -> int:
    """The Gaudi cards a pod requests (its containers' limits, else requests)."""
    total = 0
    for container in (pod.get("spec") or {}).get("containers") or []:
        resources = container.get("resources") or {}
        total += int((resources.get("limits") or {}).get(GAUDI) or (resources.get("requests") or {}).get(GAUDI) or 0)
    return total


def of_record(record: Dict[str, Any]) -> Cluster:
    """The cluster an attached record names."""
    facts = cluster_facts(record)
    return Cluster(facts["context"], facts["namespace"], facts.get("kubeconfig"))


def cluster_facts(record: Dict[str, Any]) -> Dict[str, Any]:
    return dict((record.get("resources") or {}).get("kubernetes") or {})


def is_cluster(record: Dict[str, Any]) -> bool:
    return str(record.get("url") or "").startswith("k8s://")
