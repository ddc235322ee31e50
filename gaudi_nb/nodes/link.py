"""Links to attached nodes: one SSH connection per node, kept in a background event loop, reconnected with backoff.

The link's state (up or unreachable) is not the run's: a run on a node that cannot be
reached goes on there, and its mirror resumes from its byte offset when the link returns.
A run across several nodes has one mirror per node; `MergedStream` merges them into the
run's one stream.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import heapq
import json
import os
import posixpath
import shlex
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, TypeVar

from ..errors import GaudiNbError
from ..events import COMMON_KEYS, make_event
from .ssh import UnreachableError  # the one error for a node that does not answer, wherever it is raised

T = TypeVar("T")

BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)  # then every 8 s


async def _private_makedirs(sftp: Any, folder: str) -> None:
    """The folders a run's files go into on the node (the run folder first of them) are made owner-only, as the node's own commands make them."""
    import asyncssh

    await sftp.makedirs(folder, attrs=asyncssh.SFTPAttrs(permissions=0o700), exist_ok=True)


@dataclass
class LinkState:
    up: bool = True
    error: Optional[str] = None


def _lost_link(exc: BaseException) -> bool:
    """The link failed, not the command: the OS's errors, EOF, asyncssh's ChannelOpenError and ConnectionLost."""
    return isinstance(exc, (OSError, EOFError)) or type(exc).__module__.startswith("asyncssh")


def node_command(node: Dict[str, Any], *args: str) -> str:
    """`GAUDI_NB_HOME=... python -m gaudi_nb.agent.commands ARGS` for the node's own interpreter and home."""
    env = f"GAUDI_NB_HOME={shlex.quote(node['home'])}" if node.get("home") else ""
    return " ".join(p for p in (env, shlex.quote(node.get("python") or "python3"), "-m", "gaudi_nb.agent.commands", *map(shlex.quote, args)) if p)


class Links:
    """This process's links, by node name. Views call the blocking methods; the work happens on the loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="gaudi-nb-links", daemon=True)
        self._thread.start()
        self._connections: Dict[str, Any] = {}
        self._locks: Dict[str, asyncio.Lock] = {}
        self.states: Dict[str, LinkState] = {}
        self._mirrors: Dict[str, "concurrent.futures.Future[None]"] = {}  # futures of coroutines on self.loop

    # -- blocking face -------------------------------------------------------------
    def call(self, coroutine: Awaitable[T], timeout: Optional[float] = None) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)  # type: ignore[arg-type]

    def run(self, node: Dict[str, Any], command: str, timeout: float = 120.0, input: Optional[str] = None) -> Tuple[int, str, str]:
        """Run a command on the node (`input`: its stdin); (exit status, stdout, stderr). UnreachableError if the node does not answer."""
        return self.call(self._run(node, command, timeout, input), timeout + 30)

    def over(self, node: Dict[str, Any], work: Callable[[Any], Awaitable[T]], timeout: float = 300.0) -> T:
        """Run `work(connection)` on the node's link (preflight's probe, say): no connection of its own to open."""

        async def go() -> T:
            connection = await self._connection(node)
            try:
                return await work(connection)
            except Exception as exc:
                if not _lost_link(exc):
                    raise
                self._forget(node["name"], connection, exc)
                raise UnreachableError(f"node {node['name']} stopped answering: {exc}") from None

        return self.call(go(), timeout)

    def put_text(self, node: Dict[str, Any], remote_path: str, text: str, mode: Optional[int] = None) -> None:
        self.put_bytes(node, remote_path, text.encode(), mode)

    def put_bytes(self, node: Dict[str, Any], remote_path: str, data: bytes, mode: Optional[int] = None) -> None:
        """Write a file on the node; `mode` is its permissions from the moment it exists (a file of secrets: 0o600)."""
        self.call(self._put_bytes(node, remote_path, data, mode), 600)

    def put_file(self, node: Dict[str, Any], local_path: Path, remote_path: str) -> None:
        self.call(self._put_file(node, local_path, remote_path), 3600)

    def state(self, name: str) -> LinkState:
        return self.states.setdefault(name, LinkState())

    def mirror(self, node: Dict[str, Any], remote_path: str, local_path: Path, remote_run_dir: Optional[str] = None) -> None:
        """Keep local_path a byte-exact copy of the node's growing file until the run ends (idempotent)."""
        key = str(local_path)
        running = self._mirrors.get(key)
        if running is not None and not running.done():
            return
        self._mirrors[key] = asyncio.run_coroutine_threadsafe(self._mirror(node, remote_path, Path(local_path), remote_run_dir), self.loop)

    def wait_mirrored(self, local_path: Path, timeout: float) -> bool:
        """Wait until the mirror of a file whose run has ended has every byte; False if it has not within timeout."""
        running = self._mirrors.get(str(local_path))
        if running is None:
            return False
        try:
            running.result(timeout)
            return True
        except Exception:  # still copying after timeout, or it gave up: what is here is what there is
            return False

    def mirroring(self, local_path: Path) -> bool:
        running = self._mirrors.get(str(local_path))
        return running is not None and not running.done()

    def drop(self, name: str) -> None:
        """Close a node's connection (tests use it to simulate a dropped link; the next call reconnects)."""
        connection = self._connections.pop(name, None)
        if connection is not None:
            self.loop.call_soon_threadsafe(connection.close)

    # -- on the loop ---------------------------------------------------------------------
    async def _connection(self, node: Dict[str, Any]) -> Any:
        from .attach import address_of
        from .ssh import open_connection

        name = node["name"]
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            connection = self._connections.get(name)
            if connection is not None and not connection.is_closed():
                return connection
            try:
                connection = await open_connection(address_of(node), connect_timeout=10.0)
            except (OSError, asyncio.TimeoutError, GaudiNbError) as exc:
                self._mark(name, up=False, error=str(exc))
                raise UnreachableError(f"node {name} is unreachable: {exc}") from None
            self._connections[name] = connection
            self._mark(name, up=True)
            return connection

    def _mark(self, name: str, *, up: bool, error: Optional[str] = None) -> None:
        state = self.state(name)
        state.up, state.error = up, error

    async def _run(self, node: Dict[str, Any], command: str, timeout: float, input: Optional[str] = None) -> Tuple[int, str, str]:
        connection = await self._connection(node)
        try:
            result = await asyncio.wait_for(connection.run(command, check=False, input=input), timeout)
        except Exception as exc:
            if not (_lost_link(exc) or isinstance(exc, asyncio.TimeoutError)):
                raise
            self._forget(node["name"], connection, exc)
            raise UnreachableError(f"node {node['name']} stopped answering: {exc}") from None
        return int(result.exit_status or 0), str(result.stdout or ""), str(result.stderr or "")

    def _forget(self, name: str, connection: Any, exc: BaseException) -> None:
        if self._connections.get(name) is connection:
            self._connections.pop(name, None)
        connection.close()
        self._mark(name, up=False, error=str(exc) or type(exc).__name__)

    async def _put_bytes(self, node: Dict[str, Any], remote_path: str, data: bytes, mode: Optional[int] = None) -> None:
        import asyncssh

        connection = await self._connection(node)
        attrs = asyncssh.SFTPAttrs(permissions=mode) if mode is not None else asyncssh.SFTPAttrs()
        async with connection.start_sftp_client() as sftp:
            await _private_makedirs(sftp, posixpath.dirname(remote_path))
            async with sftp.open(remote_path, "wb", attrs) as fh:
                await fh.write(data)

    async def _put_file(self, node: Dict[str, Any], local_path: Path, remote_path: str) -> None:
        connection = await self._connection(node)
        async with connection.start_sftp_client() as sftp:
            await _private_makedirs(sftp, posixpath.dirname(remote_path))
            await sftp.put(str(local_path), remote_path)

    async def _mirror(self, node: Dict[str, Any], remote_path: str, local_path: Path, remote_run_dir: Optional[str]) -> None:
        """Stream the node's file from the mirror's own size; after a drop, reconnect with backoff and go on from there.

        One process at a time mirrors a file (a lock on it): a CLI call and a notebook kernel
        following the same run would otherwise both append the same bytes. The other waits, and
        takes over if the first process goes away. The lock is let go while this process waits to
        reconnect, so one that cannot reach the node (another HOME, no key) never holds up one that can.
        """
        local_path.parent.mkdir(parents=True, exist_ok=True)
        failures = 0
        with open(local_path, "ab") as held:
            while True:
                try:
                    fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    await asyncio.sleep(1.0)
                    continue
                try:
                    before = local_path.stat().st_size
                    if await self._mirror_once(node, remote_path, local_path, remote_run_dir):
                        return  # the run ended and every byte is here
                    if local_path.stat().st_size > before:
                        failures = 0  # it got somewhere before the drop: retry soon
                finally:
                    fcntl.flock(held.fileno(), fcntl.LOCK_UN)
                await asyncio.sleep(BACKOFF_S[min(failures, len(BACKOFF_S) - 1)])
                failures += 1

    async def _mirror_once(self, node: Dict[str, Any], remote_path: str, local_path: Path, remote_run_dir: Optional[str]) -> bool:
        """One pass of `tail --follow` from the local size; True once the node says the file is complete."""
        offset = local_path.stat().st_size
        ended_by = ("--run-dir", remote_run_dir) if remote_run_dir else ()
        command = node_command(node, "tail", "--path", remote_path, "--offset", str(offset), "--follow", *ended_by)
        try:
            connection = await self._connection(node)
            process = await connection.create_process(command, encoding=None)
            with open(local_path, "ab") as out:
                while True:
                    chunk = await process.stdout.read(65536)
                    if not chunk:
                        break
                    out.write(chunk)
                    out.flush()
            await process.wait()
            if process.exit_status == 0:
                return True
            raise OSError(f"tail exited with {process.exit_status}")
        except UnreachableError:
            return False
        except Exception as exc:  # a dropped link shows up as one of asyncssh's or the OS's errors
            connection = self._connections.get(node["name"])
            if connection is not None:
                self._forget(node["name"], connection, exc)
            return False


_links: Optional[Links] = None
_links_lock = threading.Lock()


def links() -> Links:
    """This process's Links (started on first use)."""
    global _links
    with _links_lock:
        if _links is None:
            _links = Links()
        return _links


# -- several nodes: one stream from one mirror per node ----------------------------------------------
# The client keeps each node's events.jsonl mirrored byte for byte in runs/<id>/nodes/<name>/ and
# appends their complete lines to runs/<id>/events.jsonl (the stream every view and the store
# read) in the order they arrived. A node's own run_end, and the run_start of every node but
# node 0, go into that stream as `log` events (`node_end`, `node_start`): the run has one
# run_start, node 0's, and one run_end, written here once every node has ended (combine_ends).

# which node's end speaks for the run: the first status in this list that any node ended with
_END_ORDER = ("lost", "failed", "budget_exceeded", "stopped", "succeeded")
_ENDED_WELL = ("succeeded", "stopped", "budget_exceeded")


def combine_ends(ends: Dict[str, Dict[str, Any]], order: Sequence[str]) -> Dict[str, Any]:
    """The run's run_end fields from each node's run_end (`order`: node names, node 0 first).

    A node that was lost or failed speaks for the run (a lost agent first: the others' ranks
    fail because of it; among equals the one that ended first, the cause rather than the
    echo); otherwise the nodes agree (budget_exceeded, stopped or succeeded). The spend is
    the sum of the nodes' (unknown if any node's is).
    """
    def rank(name: str) -> Tuple[int, float, int]:
        status = str(ends[name].get("status"))
        where = _END_ORDER.index(status) if status in _END_ORDER else _END_ORDER.index("failed")
        return where, float(ends[name].get("t") or 0.0), list(order).index(name) if name in order else len(order)

    speaker = min(ends, key=rank)
    end = ends[speaker]
    status = str(end.get("status") or "failed")
    reason = end.get("reason")
    if status not in _ENDED_WELL:
        reason = f"node {speaker}: {reason or status}"
    spent: List[Any] = [e.get("usd") for e in ends.values()]
    total = None if any(u is None for u in spent) else float(sum(float(u) for u in spent))
    return {
        "status": status,
        "exit_code": end.get("exit_code"),
        "reason": reason,
        "last_log_lines": end.get("last_log_lines") if status not in _ENDED_WELL else None,
        "steps_completed": max(int(e.get("steps_completed") or 0) for e in ends.values()),
        "usd": total,
        "nodes": {name: {k: ends[name].get(k) for k in ("status", "reason", "exit_code", "usd")} for name in order if name in ends},
        "ended_by": "client",
    }


def _note_end(state: Dict[str, Any], name: str, line: bytes, node_end: Optional[Dict[str, Any]]) -> None:
    """A node's end counts until its next attempt's `restart` (a resume, Slurm's requeue), which reopens the run."""
    if node_end is not None:
        state["ends"].setdefault(name, node_end)
    elif b'"restart"' in line:
        try:
            restart = json.loads(line).get("type") == "restart"
        except (ValueError, AttributeError):
            restart = False
        if restart:
            state["ends"].pop(name, None)
            state["final"] = False


def _dump(event: Dict[str, Any]) -> bytes:
    return (json.dumps(event, separators=(",", ":"), default=str) + "\n").encode()


def _for_the_run(line: bytes, leader: str) -> Tuple[bytes, Optional[Dict[str, Any]]]:
    """A node's line as the run's stream carries it, and the node's run_end if it is one. Pure, so
    a merge interrupted by a crash can tell which node lines are in the stream already."""
    try:
        event = json.loads(line)
    except ValueError:
        return line, None
    if not isinstance(event, dict):
        return line, None
    kind, node = event.get("type"), event.get("node")
    if kind == "run_end":
        status, reason = event.get("status"), event.get("reason")
        message = f"node {node} ended {status}" + (f": {reason}" if reason else "")
        details = {k: v for k, v in event.items() if k not in COMMON_KEYS}
        return _as_log(event, level="info" if status in _ENDED_WELL else "error", message=message, node_end=details), event
    if kind == "run_start" and node != leader:
        details = {k: v for k, v in event.items() if k not in COMMON_KEYS and k != "spec"}
        message = f"node {node}: agent started ({event.get('command')})"
        return _as_log(event, level="info", message=message, node_start=details), None
    return line, None


def _as_log(event: Dict[str, Any], **fields: Any) -> bytes:
    """A node's event as a log event of the run with the node's head (its t: the same line on every pass).
    A node line whose head breaks the contract still becomes a log line with that head, so a node's end is
    never read as the run's; the contract's check reports it, the merge goes on."""
    try:
        return _dump(make_event("log", event["run_id"], node=event["node"], rank=event.get("rank"), t=event["t"], **fields))
    except (KeyError, ValueError):
        return _dump({**{key: event.get(key) for key in COMMON_KEYS}, "type": "log", **fields})


class MergedStream:
    """The run's events.jsonl merged from its nodes' mirrors, safely across crashes and processes.

    Each pass runs under a lock (one process merges at a time) and ends by committing, in
    nodes/merge.json, the stream's size and each node mirror's offset. A pass that died after
    appending and before committing left lines past the committed size: the next pass matches
    them to the nodes' next lines (they are the same bytes) and moves those offsets on, and
    drops a torn last line (nothing reads a line before its newline). So no line is lost or
    doubled, and the stream only grows.
    """

    def __init__(self, run_dir: Path, names: Sequence[str], run_id: str) -> None:
        self.run_dir = Path(run_dir)
        self.names = list(names)
        self.run_id = run_id
        self.nodes_dir = self.run_dir / "nodes"
        self.events = self.run_dir / "events.jsonl"
        self.state_path = self.nodes_dir / "merge.json"

    def node_events(self, name: str) -> Path:
        return self.nodes_dir / name / "events.jsonl"

    def node_dir(self, name: str) -> Path:
        return self.nodes_dir / name

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.nodes_dir.mkdir(parents=True, exist_ok=True)
        with open(self.nodes_dir / "merge.lock", "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def state(self) -> Dict[str, Any]:
        try:
            state: Dict[str, Any] = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            state = {}
        state.setdefault("size", 0)
        state.setdefault("final", False)
        state.setdefault("ends", {})
        offsets = state.setdefault("offsets", {})
        for name in self.names:
            offsets.setdefault(name, 0)
        return state

    def _commit(self, state: Dict[str, Any]) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.state_path)

    def _pending(self, name: str, offset: int) -> List[Tuple[bytes, int]]:
        """The node mirror's complete lines from offset, each with the offset after it."""
        try:
            with open(self.node_events(name), "rb") as fh:
                fh.seek(offset)
                data = fh.read()
        except OSError:
            return []
        lines, position = [], offset
        for line in data.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break  # still being written
            position += len(line)
            lines.append((line, position))
        return lines

    def merge(self, may_end: bool = True) -> Dict[str, Any]:
        """One pass: append what arrived from every node; the run's run_end once all have ended (may_end: a
        scheduler that may start the job again holds it back until the job has left). A node's `restart` (its
        next attempt) takes back its end. Returns the state."""
        leader = self.names[0]
        with self.locked():
            state = self.state()
            pending = {name: self._pending(name, state["offsets"][name]) for name in self.names}
            taken = {name: 0 for name in self.names}
            fd = os.open(self.events, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                size = os.fstat(fd).st_size
                if size > state["size"]:
                    size = self._reconcile(fd, size, state, pending, taken, leader)
                fresh = []
                for order, name in enumerate(self.names):
                    for line, end in pending[name][taken[name]:]:
                        try:
                            t = float(json.loads(line).get("t") or 0.0)
                        except (ValueError, AttributeError):
                            t = 0.0
                        fresh.append((t, order, name, line, end))
                # by arrival: each node's lines stay in their order; between nodes, by time
                merged = list(heapq.merge(*[[f for f in fresh if f[2] == name] for name in self.names], key=lambda f: (f[0], f[1])))
                out = []
                for _, _, name, line, end in merged:
                    text, node_end = _for_the_run(line, leader)
                    out.append(text)
                    state["offsets"][name] = end
                    _note_end(state, name, line, node_end)
                if may_end and not state["final"] and all(name in state["ends"] for name in self.names):
                    final = combine_ends(state["ends"], self.names)
                    t = max(float(e.get("t") or 0.0) for e in state["ends"].values())
                    out.append(_dump(make_event("run_end", self.run_id, node=",".join(self.names), t=t, **final)))
                    state["final"] = True
                if out:
                    data = b"".join(out)
                    os.write(fd, data)
                    os.fsync(fd)
                    size += len(data)
                if out or size != state["size"]:
                    state["size"] = size
                    self._commit(state)
            finally:
                os.close(fd)
            return state

    def _reconcile(self, fd: int, size: int, state: Dict[str, Any], pending: Dict[str, List[Tuple[bytes, int]]], taken: Dict[str, int], leader: str) -> int:
        """Account for lines past the committed size (a pass that died before its commit, or a
        run_end the client wrote itself); returns the stream's size after dropping a torn line."""
        committed = int(state["size"])
        os.lseek(fd, committed, os.SEEK_SET)
        tail = b""
        while len(tail) < size - committed:
            chunk = os.read(fd, size - committed - len(tail))
            if not chunk:
                break
            tail += chunk
        whole = tail.rfind(b"\n") + 1
        if whole < len(tail):
            os.ftruncate(fd, committed + whole)
        expected = {name: [_for_the_run(line, leader) for line, _ in pending[name]] for name in self.names}
        for line in tail[:whole].splitlines(keepends=True):
            for name in self.names:
                i = taken[name]
                if i < len(expected[name]) and expected[name][i][0] == line:
                    taken[name] = i + 1
                    state["offsets"][name] = pending[name][i][1]
                    _note_end(state, name, line, expected[name][i][1])
                    break
            else:
                try:
                    if json.loads(line).get("type") == "run_end":
                        state["final"] = True  # the run's own end (this merge's, or a launch that failed)
                except (ValueError, AttributeError):
                    pass
        return committed + whole
