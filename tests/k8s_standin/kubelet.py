"""The stand-in's controllers: the Job controller, the scheduler, and a kubelet that runs containers as local processes.

- Job controller: an Indexed Job gets one pod per completion index (`<job>-<index>-xxxxx`, hostname
  `<job>-<index>`, env JOB_COMPLETION_INDEX), its status counts them, and a failed pod beyond
  backoffLimit fails the Job (BackoffLimitExceeded) and ends the pods still running.
- Scheduler: a pod goes to a node whose allocatable `habana.ai/gaudi` (and cpu) covers its request
  beside the pods already there; otherwise it stays Pending with PodScheduled=False/Unschedulable and a
  FailedScheduling event carrying the scheduler's message ("0/2 nodes are available: 2 Insufficient
  habana.ai/gaudi. ...").
- Kubelet: the volumes made as folders (a persistentVolumeClaim is one folder per claim, shared by every
  pod: the ReadWriteMany volume; configMap and secret keys written as files; emptyDir), then each
  container's command started as a process group with the pod's environment. A container's view of
  the file system is its mounts: the stand-in has no mount namespace, so it writes each mountPath as its
  folder here in the command, args and env values. stdout and stderr go to the container's log.
"""
from __future__ import annotations

import base64
import copy
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .objects import Obj, Objects, now_iso

GAUDI = "habana.ai/gaudi"


def requested(pod: Obj, resource: str = GAUDI) -> int:
    return sum(int((c.get("resources") or {}).get("limits", {}).get(resource) or (c.get("resources") or {}).get("requests", {}).get(resource) or 0) for c in pod["spec"].get("containers", []))


class Kubelet:
    def __init__(self, objects: Objects, root: Path, base_env: Dict[str, str]) -> None:
        self.objects, self.root, self.base_env = objects, root, base_env
        self.processes: Dict[str, Dict[str, subprocess.Popen]] = {}  # pod uid -> container -> process
        self.lock = threading.RLock()
        self.deleted: Dict[Any, int] = {}  # (namespace, job) -> its pods deleted before they ended
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="k8s-standin-kubelet")
        self.thread.start()

    # -- the Job controller ------------------------------------------------------------------
    def job_created(self, job: Obj) -> None:
        spec, name, ns = job["spec"], job["metadata"]["name"], job["metadata"]["namespace"]
        for index in range(int(spec.get("parallelism") or spec.get("completions") or 1)):
            template = copy.deepcopy(spec["template"])
            pod: Obj = {"apiVersion": "v1", "kind": "Pod", "metadata": {
                "generateName": f"{name}-{index}-", "labels": {**(template.get("metadata", {}).get("labels") or {}), "job-name": name, "batch.kubernetes.io/job-completion-index": str(index)},
                "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": job["metadata"]["uid"], "controller": True}]},
                "spec": {**template["spec"], "hostname": f"{name}-{index}"},
                "status": {"phase": "Pending", "conditions": []}}
            for container in pod["spec"]["containers"]:
                container["env"] = [*container.get("env", []), {"name": "JOB_COMPLETION_INDEX", "value": str(index)}]
            self.objects.create("pods", ns, pod)
        self.objects.update("jobs", ns, name, lambda j: j.setdefault("status", {}).update(active=int(spec.get("parallelism") or 1), startTime=now_iso()))

    def _job_tick(self) -> None:
        jobs, _ = self.objects.list("jobs", None)
        for job in jobs:
            if any(c["type"] in ("Complete", "Failed") for c in job.get("status", {}).get("conditions", [])):
                continue
            ns, name = job["metadata"]["namespace"], job["metadata"]["name"]
            pods, _ = self.objects.list("pods", ns, f"job-name={name}")
            phases = [p["status"]["phase"] for p in pods]
            failed = phases.count("Failed") + self.deleted.get((ns, name), 0)
            succeeded = phases.count("Succeeded")
            condition = None
            if failed > int(job["spec"].get("backoffLimit", 6)):
                condition = {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}
                for pod in pods:
                    if pod["status"]["phase"] in ("Pending", "Running"):
                        self.delete_pod(ns, pod["metadata"]["name"])
            elif succeeded >= int(job["spec"].get("completions") or 1):
                condition = {"type": "Complete", "status": "True"}

            counts = {"active": phases.count("Pending") + phases.count("Running"), "succeeded": succeeded, "failed": failed}
            self.objects.update("jobs", ns, name, lambda j, counts=counts, condition=condition: _job_status(j, counts, condition))

    # -- the scheduler -----------------------------------------------------------------------
    def _schedule(self, pod: Obj) -> None:
        nodes, _ = self.objects.list("nodes", None)
        pods, _ = self.objects.list("pods", None)
        want = requested(pod)
        fits, short = [], 0
        for node in nodes:
            used = sum(requested(p) for p in pods if p["spec"].get("nodeName") == node["metadata"]["name"] and p["status"]["phase"] in ("Pending", "Running"))
            if int(node["status"]["allocatable"].get(GAUDI, 0)) - used >= want:
                fits.append(node["metadata"]["name"])
            else:
                short += 1
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        if fits:
            self.objects.update("pods", ns, name, lambda p: (p["spec"].update(nodeName=fits[0]), _condition(p, "PodScheduled", "True")))
            self._event(pod, "Normal", "Scheduled", f"Successfully assigned {ns}/{name} to {fits[0]}", "default-scheduler")
            return
        total = len(nodes)
        message = f"0/{total} nodes are available: {short} Insufficient {GAUDI}. preemption: 0/{total} nodes are available: {total} No preemption victims found for incoming pod."
        if any(c.get("message") == message for c in pod["status"].get("conditions", [])):
            return  # told already: the scheduler repeats its event only when the reason changes
        self.objects.update("pods", ns, name, lambda p: _condition(p, "PodScheduled", "False", "Unschedulable", message))
        self._event(pod, "Warning", "FailedScheduling", message, "default-scheduler")

    def _event(self, pod: Obj, kind: str, reason: str, message: str, component: str) -> None:
        meta = pod["metadata"]
        self.objects.create("events", meta["namespace"], {"apiVersion": "v1", "kind": "Event", "metadata": {"generateName": meta["name"] + "."},
                                                          "involvedObject": {"kind": "Pod", "name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"]},
                                                          "type": kind, "reason": reason, "message": message, "source": {"component": component},
                                                          "firstTimestamp": now_iso(), "lastTimestamp": now_iso(), "count": 1})

    # -- the kubelet -------------------------------------------------------------------------
    def _start(self, pod: Obj) -> None:
        ns, name, uid = pod["metadata"]["namespace"], pod["metadata"]["name"], pod["metadata"]["uid"]
        mounts = self._volumes(pod)
        started: Dict[str, subprocess.Popen] = {}
        for container in pod["spec"]["containers"]:
            argv, env, _ = self.exec_command(pod, container["name"], [*(container.get("command") or []), *(container.get("args") or [])], mounts)
            log = self.log_path(uid, container["name"])
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "ab") as out:
                started[container["name"]] = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, cwd=env["HOME"])
        with self.lock:
            self.processes[uid] = started
        statuses = [{**_image(pod, c), "ready": True, "restartCount": 0, "started": True, "state": {"running": {"startedAt": now_iso()}}} for c in started]
        self.objects.update("pods", ns, name, lambda p: (p["status"].update(phase="Running", podIP="127.0.0.1", startTime=now_iso(), containerStatuses=statuses),
                                                         _condition(p, "Initialized", "True"), _condition(p, "Ready", "True")))
        self._event(pod, "Normal", "Started", "Started container " + ", ".join(started), "kubelet")

    def exec_command(self, pod: Obj, name: str, command: List[str], mounts: Optional[Dict[str, str]] = None) -> Tuple[List[str], Dict[str, str], str]:
        """A command as the container runs it: its argv and environment with the mounts written as their folders, and its working folder."""
        container = next(c for c in pod["spec"]["containers"] if c["name"] == name)
        mounts = mounts or self._volumes(pod)
        paths = {m["mountPath"]: mounts[m["name"]] for m in container.get("volumeMounts", [])}
        env = {**self.base_env, "HOSTNAME": pod["spec"].get("hostname") or pod["metadata"]["name"], "HOME": str(self.root / "home" / pod["metadata"]["uid"])}
        env.update(self._env(pod, container, pod["metadata"]["namespace"]))
        env = {k: _mounted(v, paths) for k, v in env.items()}
        Path(env["HOME"]).mkdir(parents=True, exist_ok=True)
        return [_expand(_mounted(a, paths), env) for a in command], env, env["HOME"]

    def log_path(self, uid: str, container: str) -> Path:
        return self.root / "logs" / uid / f"{container}.log"

    def _volumes(self, pod: Obj) -> Dict[str, str]:
        ns, uid = pod["metadata"]["namespace"], pod["metadata"]["uid"]
        made: Dict[str, str] = {}
        for volume in pod["spec"].get("volumes", []):
            if "persistentVolumeClaim" in volume:
                path = self.root / "volumes" / ns / volume["persistentVolumeClaim"]["claimName"]
            else:
                path = self.root / "pods" / uid / volume["name"]
                source = volume.get("configMap") or volume.get("secret")
                if source is not None:
                    kind = "configmaps" if "configMap" in volume else "secrets"
                    obj = self.objects.get(kind, ns, source.get("name") or source.get("secretName")) or {}
                    path.mkdir(parents=True, exist_ok=True)
                    for key, value in _data(obj).items():
                        (path / key).write_bytes(value)
            path.mkdir(parents=True, exist_ok=True)
            made[volume["name"]] = str(path)
        return made

    def _env(self, pod: Obj, container: Obj, ns: str) -> Dict[str, str]:
        env: Dict[str, str] = {}
        for source in container.get("envFrom", []):
            ref = source.get("secretRef") or source.get("configMapRef") or {}
            obj = self.objects.get("secrets" if "secretRef" in source else "configmaps", ns, ref.get("name")) or {}
            env.update({k: v.decode() for k, v in _data(obj).items()})
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = _expand(str(item["value"]), env)
                continue
            ref = item.get("valueFrom", {})
            if "fieldRef" in ref:
                env[item["name"]] = _field_ref(pod, ref["fieldRef"]["fieldPath"])
            elif "secretKeyRef" in ref or "configMapKeyRef" in ref:
                key = ref.get("secretKeyRef") or ref.get("configMapKeyRef")
                obj = self.objects.get("secrets" if "secretKeyRef" in ref else "configmaps", ns, key["name"]) or {}
                env[item["name"]] = _data(obj).get(key["key"], b"").decode()
        return env

    def _reap(self, pod: Obj) -> None:
        uid = pod["metadata"]["uid"]
        with self.lock:
            running = self.processes.get(uid) or {}
            codes = {name: p.poll() for name, p in running.items()}
        if not running or any(code is None for code in codes.values()):
            return
        with self.lock:
            self.processes.pop(uid, None)
        statuses = [{**_image(pod, n), "ready": False, "restartCount": 0, "state": {"terminated": {"exitCode": c, "reason": "Completed" if c == 0 else "Error", "finishedAt": now_iso()}}} for n, c in codes.items()]
        phase = "Succeeded" if all(c == 0 for c in codes.values()) else "Failed"
        self.objects.update("pods", pod["metadata"]["namespace"], pod["metadata"]["name"], lambda p: (p["status"].update(phase=phase, containerStatuses=statuses), _condition(p, "Ready", "False")))

    def kill(self, uid: str, sig: int = signal.SIGKILL) -> None:
        with self.lock:
            running = self.processes.pop(uid, {}) if sig == signal.SIGKILL else dict(self.processes.get(uid, {}))
        for process in running.values():
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                pass
            if sig == signal.SIGKILL:
                process.wait()

    def end_pod(self, ns: str, name: str, reason: str, message: str, exit_code: int = 137) -> None:
        """The node takes the pod away: its processes killed, the pod Failed with the reason (Evicted, OOMKilled)."""
        pod = self.objects.get("pods", ns, name)
        if pod is None:
            return
        self.kill(pod["metadata"]["uid"])
        terminated = {"terminated": {"exitCode": exit_code, "reason": reason, "message": message, "finishedAt": now_iso()}}
        statuses = [{**_image(pod, c["name"]), "ready": False, "restartCount": 0, "state": terminated} for c in pod["spec"]["containers"]]
        pod_reason = reason if reason == "Evicted" else None
        self.objects.update("pods", ns, name, lambda p: p["status"].update(phase="Failed", reason=pod_reason, message=message, containerStatuses=statuses))
        self._event(pod, "Warning", reason, message, "kubelet")

    def delete_pod(self, ns: str, name: str) -> Optional[Obj]:
        pod = self.objects.get("pods", ns, name)
        if pod is None:
            return None
        self.kill(pod["metadata"]["uid"], signal.SIGTERM)  # the grace period, then the rest
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(p.poll() is None for p in self.processes.get(pod["metadata"]["uid"], {}).values()):
            time.sleep(0.05)
        self.kill(pod["metadata"]["uid"])
        owner = (pod["metadata"].get("ownerReferences") or [{}])[0].get("name")
        if owner and pod["status"]["phase"] not in ("Succeeded", "Failed"):
            self.deleted[(ns, owner)] = self.deleted.get((ns, owner), 0) + 1  # a pod deleted before it ended counts as failed
        shutil.rmtree(self.root / "pods" / pod["metadata"]["uid"], ignore_errors=True)
        return self.objects.delete("pods", ns, name)

    def _loop(self) -> None:
        while not self.stopping.wait(0.1):
            pods, _ = self.objects.list("pods", None)
            for pod in pods:
                try:
                    if pod["status"]["phase"] == "Pending" and not pod["spec"].get("nodeName"):
                        self._schedule(pod)
                    elif pod["status"]["phase"] == "Pending":
                        self._start(pod)
                    elif pod["status"]["phase"] == "Running":
                        self._reap(pod)
                except Exception as exc:  # a broken pod spec: the pod fails with the reason, the stand-in goes on
                    self.objects.update("pods", pod["metadata"]["namespace"], pod["metadata"]["name"], lambda p, e=exc: p["status"].update(phase="Failed", reason="StandInError", message=f"{type(e).__name__}: {e}"))
            self._job_tick()

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        for uid in list(self.processes):
            self.kill(uid)


def _job_status(job: Obj, counts: Dict[str, int], condition: Optional[Dict[str, str]]) -> None:
    # a Job the API server has just stored may not have its status yet (the controller fills it after its pods): a
    # KeyError here used to end the kubelet's thread, and every pod after it stayed Pending for ever
    status = job.setdefault("status", {})
    status.update(counts)
    if condition:
        status.setdefault("conditions", []).append({**condition, "lastTransitionTime": now_iso()})


def _field_ref(pod: Obj, path: str) -> str:
    """The downward API: metadata.name, metadata.namespace, status.podIP, metadata.labels['k'], metadata.annotations['k']."""
    found = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if found:
        return str((pod["metadata"].get(found[1]) or {}).get(found[2], ""))
    return str({"metadata.name": pod["metadata"]["name"], "metadata.namespace": pod["metadata"]["namespace"], "status.podIP": "127.0.0.1"}.get(path, ""))


def _data(obj: Obj) -> Dict[str, bytes]:
    """A ConfigMap's or Secret's keys as bytes (a Secret's data and a ConfigMap's binaryData are base64)."""
    secret = obj.get("kind") == "Secret"
    found = {k: base64.b64decode(v) if secret else v.encode() for k, v in (obj.get("data") or {}).items()}
    found.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
    return found


def _image(pod: Obj, name: str) -> Dict[str, str]:
    image = next(c.get("image", "") for c in pod["spec"]["containers"] if c["name"] == name)
    return {"name": name, "image": image, "imageID": f"standin://{image}"}


def _condition(pod: Obj, kind: str, status: str, reason: Optional[str] = None, message: Optional[str] = None) -> None:
    conditions: List[Dict[str, Any]] = [c for c in pod["status"].setdefault("conditions", []) if c["type"] != kind]
    conditions.append({"type": kind, "status": status, "lastTransitionTime": now_iso(), **({"reason": reason} if reason else {}), **({"message": message} if message else {})})
    pod["status"]["conditions"] = conditions


def _mounted(text: str, paths: Dict[str, str]) -> str:
    for mount in sorted(paths, key=len, reverse=True):
        text = re.sub(re.escape(mount.rstrip("/")) + r"(?![\w.-])", lambda _m, to=paths[mount]: to, text)
    return text


def _expand(text: str, env: Dict[str, str]) -> str:
    """Kubernetes' $(VAR) in command, args and env values (a shell's $VAR is the shell's own)."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), text)
