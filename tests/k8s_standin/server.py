"""The stand-in's HTTP face: the paths, verbs and bodies of the Kubernetes API that gaudi_nb's client calls.

Written from the API conventions (https://kubernetes.io/docs/reference/using-api/api-concepts/):
discovery (/version, /api, /api/v1, /apis, /apis/GROUP/VERSION), namespaced CRUD under
/api/v1/namespaces/NS/RESOURCE and /apis/GROUP/VERSION/namespaces/NS/RESOURCE, list and
?watch=true (one JSON watch event a line, chunked) with resourceVersion, pods/log (follow
streams), pods/exec (a WebSocket speaking v4.channel.k8s.io: channel 1 stdout, 2 stderr, 3 the
status), SelfSubjectAccessReview, and a Status object for every error. A bearer token is required.
"""
from __future__ import annotations

import base64
import hashlib
import json
import socket
import struct
import subprocess
import time
from http.server import BaseHTTPRequestHandler
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, urlparse

from .objects import Obj
from .operators import OPERATORS

CORE = ["namespaces", "nodes", "pods", "services", "configmaps", "secrets", "persistentvolumeclaims", "events"]
CLUSTER_SCOPED = {"namespaces", "nodes"}
KINDS = {"namespaces": "Namespace", "nodes": "Node", "pods": "Pod", "services": "Service", "configmaps": "ConfigMap", "secrets": "Secret",
         "persistentvolumeclaims": "PersistentVolumeClaim", "events": "Event", "jobs": "Job", "pytorchjobs": "PyTorchJob", "mpijobs": "MPIJob",
         "trainjobs": "TrainJob", "trainingruntimes": "TrainingRuntime", "selfsubjectaccessreviews": "SelfSubjectAccessReview"}
BUILT_IN_GROUPS = {"batch": {"v1": ["jobs"]}, "authorization.k8s.io": {"v1": ["selfsubjectaccessreviews"]}}
# what installing each operator adds to discovery (its CRDs)
OPERATOR_GROUPS = {"pytorchjob": ("kubeflow.org", "v1", ["pytorchjobs"]), "mpijob": ("kubeflow.org", "v2beta1", ["mpijobs"]),
                   "trainjob": ("trainer.kubeflow.org", "v1alpha1", ["trainjobs", "trainingruntimes"])}


def status(code: int, reason: str, message: str) -> Obj:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    cluster: Any = None  # the Cluster this server answers for (set on the subclass)

    def log_message(self, format: str, *args: Any) -> None:
        self.cluster.requests.append(f"{self.command} {self.path}")

    # -- plumbing ----------------------------------------------------------------------------
    def _send(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _stream_start(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _body(self) -> Obj:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"{}")

    def _route(self) -> Tuple[List[str], Dict[str, List[str]]]:
        """The path's parts and the query."""
        url = urlparse(self.path)
        return [p for p in url.path.split("/") if p], parse_qs(url.query)

    def _authorized(self) -> bool:
        if self.headers.get("Authorization") == f"Bearer {self.cluster.token}":
            return True
        self._send(401, status(401, "Unauthorized", "Unauthorized"))
        return False

    # -- verbs -------------------------------------------------------------------------------
    def do_GET(self) -> None:
        if not self._authorized():
            return
        parts, query = self._route()
        discovery = self._discovery(parts)
        if discovery is not None:
            self._send(200, discovery)
            return
        found = self._resource(parts)
        if found is None:
            self._send(404, status(404, "NotFound", f"the server could not find the requested resource ({self.path})"))
            return
        resource, ns, name, sub = found
        if sub == "log":
            self._log(ns, name, query)
        elif sub == "exec":
            self._exec(ns, name, query)
        elif name and resource == "namespaces":
            self._one(resource, "", name)
        elif name:
            self._one(resource, ns, name)
        elif query.get("watch", ["false"])[0].lower() in ("true", "1"):
            self._watch(resource, ns, query)
        else:
            items, version = self.cluster.objects.list(resource, ns if resource not in CLUSTER_SCOPED else None, query.get("labelSelector", [""])[0], query.get("fieldSelector", [""])[0])
            self._send(200, {"kind": KINDS.get(resource, "") + "List", "apiVersion": "v1", "metadata": {"resourceVersion": version}, "items": items})

    def do_POST(self) -> None:
        if not self._authorized():
            return
        parts, _ = self._route()
        found = self._resource(parts)
        if found is None:
            self._send(404, status(404, "NotFound", f"the server could not find the requested resource ({self.path})"))
            return
        resource, ns, name, sub = found
        body = self._body()
        self.cluster.received.append((resource, body))
        if resource == "selfsubjectaccessreviews":
            attributes = body.get("spec", {}).get("resourceAttributes", {})
            allowed = (attributes.get("verb"), attributes.get("resource")) not in self.cluster.denied
            self._send(201, {**body, "status": {"allowed": allowed, **({} if allowed else {"reason": "RBAC: access denied"})}})
            return
        if sub == "eviction":
            self.cluster.evict(name, ns)
            self._send(201, status(201, "", "evicted") | {"status": "Success"})
            return
        if ns not in self.cluster.namespaces:
            self._send(404, status(404, "NotFound", f'namespaces "{ns}" not found'))
            return
        if resource == "secrets" and "stringData" in body:  # write-only: the API server keeps it as data
            data = {**(body.get("data") or {}), **{k: base64.b64encode(v.encode()).decode() for k, v in body["stringData"].items()}}
            body = {**{k: v for k, v in body.items() if k != "stringData"}, "data": data}
        try:
            created = self.cluster.objects.create(resource, ns, body)
        except KeyError as exc:
            self._send(409, status(409, "AlreadyExists", f'{resource} "{exc.args[0]}" already exists'))
            return
        if resource == "jobs":
            self.cluster.kubelet.job_created(created)
        elif resource in OPERATORS:  # the operator's controller makes the pods (mpijobs: no operator here)
            OPERATORS[resource](self.cluster.objects, created)
        self._send(201, created)

    def do_DELETE(self) -> None:
        if not self._authorized():
            return
        parts, _ = self._route()
        found = self._resource(parts)
        if found is None or not found[2]:
            self._send(404, status(404, "NotFound", "not found"))
            return
        resource, ns, name, _ = found
        gone = self.cluster.delete(resource, ns, name)
        if gone is None:
            self._send(404, status(404, "NotFound", f'{resource} "{name}" not found'))
            return
        self._send(200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": {"name": name, "kind": resource}})

    # -- what the paths mean -----------------------------------------------------------------
    def _groups(self) -> Dict[str, Dict[str, List[str]]]:
        groups = {group: dict(versions) for group, versions in BUILT_IN_GROUPS.items()}
        for kind in self.cluster.operators:
            group, version, resources = OPERATOR_GROUPS[kind]
            groups.setdefault(group, {}).setdefault(version, []).extend(resources)
        return groups

    def _discovery(self, parts: List[str]) -> Optional[Obj]:
        if parts == ["version"]:
            return {"major": "1", "minor": "31", "gitVersion": "v1.31.0-standin", "gitCommit": "0", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.22", "compiler": "gc", "platform": "linux/amd64"}
        if parts == ["api"]:
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        if parts == ["api", "v1"]:
            resources = [{"name": r, "namespaced": r not in CLUSTER_SCOPED, "kind": KINDS[r], "verbs": ["get", "list", "watch", "create", "delete"]} for r in CORE]
            resources += [{"name": "pods/log", "namespaced": True, "kind": "Pod", "verbs": ["get"]}, {"name": "pods/exec", "namespaced": True, "kind": "PodExecOptions", "verbs": ["create", "get"]}]
            return {"kind": "APIResourceList", "groupVersion": "v1", "resources": resources}
        groups = self._groups()
        if parts == ["apis"]:
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in versions], "preferredVersion": {"groupVersion": f"{g}/{list(versions)[0]}", "version": list(versions)[0]}}
                for g, versions in groups.items()]}
        if len(parts) == 3 and parts[0] == "apis" and parts[2] in groups.get(parts[1], {}):
            return {"kind": "APIResourceList", "groupVersion": f"{parts[1]}/{parts[2]}", "resources": [
                {"name": r, "namespaced": r != "selfsubjectaccessreviews", "kind": KINDS[r], "verbs": ["get", "list", "watch", "create", "delete"]} for r in groups[parts[1]][parts[2]]]}
        return None

    def _resource(self, parts: List[str]) -> Optional[Tuple[str, str, str, str]]:
        """(resource, namespace, name, subresource) of a path this server serves."""
        if parts[:2] == ["api", "v1"]:
            rest = parts[2:]
            allowed = CORE
        elif len(parts) >= 3 and parts[0] == "apis" and parts[2] in self._groups().get(parts[1], {}):
            rest, allowed = parts[3:], self._groups()[parts[1]][parts[2]]
        else:
            return None
        if len(rest) >= 2 and rest[0] == "namespaces" and len(rest) > 2:
            ns, rest = rest[1], rest[2:]
        elif rest[:1] == ["namespaces"]:
            return ("namespaces", "", rest[1], "") if len(rest) == 2 else None
        else:
            ns = ""
        if not rest or rest[0] not in allowed:
            return None
        return rest[0], ns, rest[1] if len(rest) > 1 else "", rest[2] if len(rest) > 2 else ""

    def _one(self, resource: str, ns: str, name: str) -> None:
        obj = self.cluster.objects.get(resource, ns, name)
        if obj is None:
            self._send(404, status(404, "NotFound", f'{resource} "{name}" not found'))
        else:
            self._send(200, obj)

    def _watch(self, resource: str, ns: str, query: Dict[str, List[str]]) -> None:
        self._stream_start("application/json")
        since = query.get("resourceVersion", [None])[0]
        timeout = float(query.get("timeoutSeconds", ["30"])[0])
        try:
            for kind, obj in self.cluster.objects.watch(resource, ns if resource not in CLUSTER_SCOPED else None, since, query.get("labelSelector", [""])[0],
                                                        query.get("fieldSelector", [""])[0], min(timeout, self.cluster.watch_limit_s)):
                self._chunk(json.dumps({"type": kind, "object": obj}).encode() + b"\n")
            self._chunk(b"")
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _log(self, ns: str, name: str, query: Dict[str, List[str]]) -> None:
        pod = self.cluster.objects.get("pods", ns, name)
        if pod is None:
            self._send(404, status(404, "NotFound", f'pods "{name}" not found'))
            return
        container = query.get("container", [pod["spec"]["containers"][0]["name"]])[0]
        path = self.cluster.kubelet.log_path(pod["metadata"]["uid"], container)
        if not path.exists():
            self._send(400, status(400, "BadRequest", f'container "{container}" in pod "{name}" is waiting to start: ContainerCreating'))
            return
        follow = query.get("follow", ["false"])[0].lower() in ("true", "1")
        self._stream_start("text/plain")
        position = 0
        try:
            with open(path, "rb") as fh:
                while True:
                    chunk = fh.read(65536)
                    if chunk:
                        position += len(chunk)
                        self._chunk(chunk)
                        continue
                    process = self.cluster.kubelet.processes.get(pod["metadata"]["uid"], {}).get(container)
                    if not follow or process is None or process.poll() is not None:
                        if fh.read(1) == b"":
                            break
                        fh.seek(position)
                        continue
                    if self.cluster.drop_logs.is_set():  # a dropped connection: no last chunk, the client sees the stream break
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    time.sleep(0.05)
            self._chunk(b"")
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _exec(self, ns: str, name: str, query: Dict[str, List[str]]) -> None:
        pod = self.cluster.objects.get("pods", ns, name)
        if pod is None or pod["status"]["phase"] != "Running":
            self._send(404 if pod is None else 400, status(400, "BadRequest", f"pod {name} is not running"))
            return
        key = self.headers.get("Sec-WebSocket-Key", "")
        accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.send_header("Sec-WebSocket-Protocol", "v4.channel.k8s.io")
        self.end_headers()
        container = query.get("container", [pod["spec"]["containers"][0]["name"]])[0]
        argv, env, cwd = self.cluster.kubelet.exec_command(pod, container, query.get("command", []))
        done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, timeout=120)
        self.cluster.execs.append((name, query.get("command", [])))
        for channel, data in ((1, done.stdout), (2, done.stderr)):
            if data:
                self._frame(bytes([channel]) + data)
        result = {"status": "Success"} if done.returncode == 0 else {"status": "Failure", "reason": "NonZeroExitCode",
                                                                      "details": {"causes": [{"reason": "ExitCode", "message": str(done.returncode)}]}}
        self._frame(bytes([3]) + json.dumps(result).encode())
        self._frame(b"", opcode=8)
        self.close_connection = True

    def _frame(self, payload: bytes, opcode: int = 2) -> None:
        size = len(payload)
        head = bytes([0x80 | opcode]) + (bytes([size]) if size < 126 else bytes([126]) + struct.pack(">H", size) if size < 65536 else bytes([127]) + struct.pack(">Q", size))
        self.wfile.write(head + payload)
        self.wfile.flush()
