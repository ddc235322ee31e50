"""Links to attached nodes: one SSH connection per node, kept in a background event loop, reconnected with backoff.

The link's state (up or unreachable) is not the run's: a run on a node that cannot be
reached goes on there, and its mirror resumes from its byte offset when the link returns.
"""
from __future__ import annotations

import asyncio
import shlex
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Dict, Optional, Tuple, TypeVar

from ..errors import GaudiNbError

T = TypeVar("T")

BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)  # then every 8 s


@dataclass
class LinkState:
    up: bool = True
    since: float = field(default_factory=time.time)
    error: Optional[str] = None


class UnreachableError(GaudiNbError):
    """The node does not answer now; what was recorded is kept and the link is retried."""


def node_address(node: Dict[str, Any]) -> Any:
    from .ssh import SshAddress

    return SshAddress(user=node["user"], host=node["host"], port=int(node.get("port") or 22), identity_file=node.get("identity_file"), jump=node.get("jump"))


def node_command(node: Dict[str, Any], *args: str) -> str:
    """`GAUDI_NB_HOME=... python -m gaudi_nb.agent.node ARGS` for the node's own interpreter and home."""
    env = f"GAUDI_NB_HOME={shlex.quote(node['home'])}" if node.get("home") else ""
    return " ".join(p for p in (env, shlex.quote(node.get("python") or "python3"), "-m", "gaudi_nb.agent.node", *map(shlex.quote, args)) if p)


class Links:
    """This process's links, by node name. Views call the blocking methods; the work happens on the loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="gaudi-nb-links", daemon=True)
        self._thread.start()
        self._connections: Dict[str, Any] = {}
        self._locks: Dict[str, asyncio.Lock] = {}
        self.states: Dict[str, LinkState] = {}
        self._mirrors: Dict[str, "asyncio.Future[Any]"] = {}

    # -- blocking face -------------------------------------------------------------
    def call(self, coroutine: Awaitable[T], timeout: Optional[float] = None) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)  # type: ignore[arg-type]

    def run(self, node: Dict[str, Any], command: str, timeout: float = 120.0) -> Tuple[int, str, str]:
        """Run a command on the node; (exit status, stdout, stderr). UnreachableError if the node does not answer."""
        return self.call(self._run(node, command, timeout), timeout + 30)

    def put_text(self, node: Dict[str, Any], remote_path: str, text: str) -> None:
        self.call(self._put_text(node, remote_path, text), 120)

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
        self._mirrors[key] = asyncio.run_coroutine_threadsafe(self._mirror(node, remote_path, Path(local_path), remote_run_dir), self.loop)  # type: ignore[assignment]

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
        from .ssh import open_connection

        name = node["name"]
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            connection = self._connections.get(name)
            if connection is not None and not connection.is_closed():
                return connection
            try:
                connection = await open_connection(node_address(node), connect_timeout=10.0)
            except (OSError, asyncio.TimeoutError, GaudiNbError) as exc:
                self._mark(name, up=False, error=str(exc))
                raise UnreachableError(f"node {name} is unreachable: {exc}") from None
            self._connections[name] = connection
            self._mark(name, up=True)
            return connection

    def _mark(self, name: str, *, up: bool, error: Optional[str] = None) -> None:
        state = self.state(name)
        if state.up != up:
            state.since = time.time()
        state.up, state.error = up, error

    async def _run(self, node: Dict[str, Any], command: str, timeout: float) -> Tuple[int, str, str]:
        connection = await self._connection(node)
        try:
            result = await asyncio.wait_for(connection.run(command, check=False), timeout)
        except (OSError, asyncio.TimeoutError, EOFError) as exc:
            self._forget(node["name"], connection, exc)
            raise UnreachableError(f"node {node['name']} stopped answering: {exc}") from None
        except Exception as exc:  # asyncssh's ChannelOpenError / ConnectionLost: the link, not the command
            if type(exc).__module__.startswith("asyncssh"):
                self._forget(node["name"], connection, exc)
                raise UnreachableError(f"node {node['name']} stopped answering: {exc}") from None
            raise
        return int(result.exit_status or 0), str(result.stdout or ""), str(result.stderr or "")

    def _forget(self, name: str, connection: Any, exc: BaseException) -> None:
        if self._connections.get(name) is connection:
            self._connections.pop(name, None)
        connection.close()
        self._mark(name, up=False, error=str(exc) or type(exc).__name__)

    async def _put_text(self, node: Dict[str, Any], remote_path: str, text: str) -> None:
        connection = await self._connection(node)
        async with connection.start_sftp_client() as sftp:
            async with sftp.open(remote_path, "w") as fh:
                await fh.write(text)

    async def _put_file(self, node: Dict[str, Any], local_path: Path, remote_path: str) -> None:
        connection = await self._connection(node)
        async with connection.start_sftp_client() as sftp:
            await sftp.put(str(local_path), remote_path)

    async def _mirror(self, node: Dict[str, Any], remote_path: str, local_path: Path, remote_run_dir: Optional[str]) -> None:
        """Stream the node's file from the mirror's own size; after a drop, reconnect with backoff and go on from there."""
        failures = 0
        local_path.parent.mkdir(parents=True, exist_ok=True)
        local_path.touch()
        while True:
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
                        failures = 0
                await process.wait()
                if process.exit_status == 0:
                    return  # the run ended and every byte is here
                raise OSError(f"tail exited with {process.exit_status}")
            except UnreachableError:
                pass
            except Exception as exc:  # a dropped link shows up as one of asyncssh's or the OS's errors
                connection = self._connections.get(node["name"])
                if connection is not None:
                    self._forget(node["name"], connection, exc)
            await asyncio.sleep(BACKOFF_S[min(failures, len(BACKOFF_S) - 1)])
            failures += 1


_links: Optional[Links] = None
_links_lock = threading.Lock()


def links() -> Links:
    """This process's Links (started on first use)."""
    global _links
    with _links_lock:
        if _links is None:
            _links = Links()
        return _links
