"""SSH to a node (asyncssh): addresses, host keys checked against known_hosts, one-line errors that say what to do."""
from __future__ import annotations

import asyncio
import shlex
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Dict, List, Optional, Tuple, TypeVar
from urllib.parse import urlsplit

from ..errors import SpecError, require

if TYPE_CHECKING:
    import asyncssh

T = TypeVar("T")

DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
URL_FORM = "ssh://USER@HOST[:PORT]"


# Connection errors are exit code 2 (SpecError): each means the address, the keys or the
# network need the user's attention, and retrying the same command would fail the same way.
class SshError(SpecError):
    """A node could not be reached, trusted or logged into."""


class HostKeyError(SshError):
    """The node's host key is not in known_hosts (`changed` False) or differs from the one there (`changed` True)."""

    def __init__(self, message: str, *, changed: bool) -> None:
        super().__init__(message)
        self.changed = changed


class KeyRefusedError(SshError):
    """The node refused every client key offered."""


class UnreachableError(SshError):
    """The node does not answer: no SSH server at the address (refused, timed out, unknown name, dropped during
    the handshake), or a link that stopped answering (nodes/link.py). The one such error: what was recorded is
    kept, and a link retries."""


@dataclass(frozen=True)
class SshAddress:
    user: str
    host: str  # a host name, an IP, or a Host alias from ~/.ssh/config
    port: int = 22
    identity_file: Optional[str] = None
    jump: Optional[str] = None  # ssh://user@bastion[:port]
    known_hosts: Optional[str] = None  # default: ~/.ssh/known_hosts

    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ssh://{self.user}@{host}:{self.port}"

    def known_hosts_path(self) -> Path:
        return Path(self.known_hosts or DEFAULT_KNOWN_HOSTS).expanduser()


_OPTIONS = ("identity_file", "jump", "known_hosts")


def parse_ssh_url(text: str, **options: Any) -> SshAddress:
    """`ssh://user@host[:port]` (host: a name, an IP, [IPv6] or a ~/.ssh/config alias) → SshAddress.

    `options`: identity_file, jump (ssh://user@bastion[:port]), known_hosts. SpecError on a bad form.
    """
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise SpecError(f"unknown SSH option(s) {', '.join(unknown)}: use {', '.join(_OPTIONS)}")
    raw = (text or "").strip()
    if not raw.startswith("ssh://"):
        raise SpecError(f"'{text}' is not an SSH address: write it as {URL_FORM}")
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError as exc:
        raise SpecError(f"'{text}' is not an SSH address ({exc}): write it as {URL_FORM}") from None
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.password:
        raise SpecError(f"'{text}' has more than a user, host and port: write it as {URL_FORM}")
    if not parts.username:
        raise SpecError(f"'{text}' names no user: write it as {URL_FORM} (ssh://root@10.0.0.5)")
    if not parts.hostname:
        raise SpecError(f"'{text}' names no host: write it as {URL_FORM}")
    if port is not None and not 0 < port < 65536:
        raise SpecError(f"'{text}': port {port} is out of range (1-65535)")
    jump = options.get("jump")
    if jump:
        bastion = parse_ssh_url(jump)
        if bastion.jump:
            raise SpecError("a jump host cannot have its own jump host here: put the chain in ~/.ssh/config (ProxyJump)")
    identity_file = options.get("identity_file")
    if identity_file:
        identity_file = str(Path(identity_file).expanduser())
        if not Path(identity_file).is_file():
            raise SpecError(f"identity file {identity_file} does not exist: give the private key's path (--identity-file)")
    known_hosts = options.get("known_hosts")
    return SshAddress(
        user=parts.username,
        host=parts.hostname,
        port=port or 22,
        identity_file=identity_file or None,
        jump=jump or None,
        known_hosts=str(Path(known_hosts).expanduser()) if known_hosts else None,
    )


def _asyncssh() -> Any:
    return require("asyncssh", "ssh", "attaching nodes over SSH")


def _load_known_hosts(path: Path) -> Any:
    asyncssh = _asyncssh()
    if path.is_file():
        try:
            return asyncssh.read_known_hosts(str(path))
        except (OSError, ValueError) as exc:
            raise SshError(f"cannot read known_hosts {path} ({exc}): fix or move the file") from None
    return asyncssh.import_known_hosts("")


def known_hosts_entry(host: str, port: int, key: Any) -> str:
    """A known_hosts line as OpenSSH writes it: `host` on port 22, `[host]:port` elsewhere."""
    name = host if port == 22 else f"[{host}]:{port}"
    return f"{name} {key.export_public_key('openssh').decode().strip()}\n"


def _record_host_key(path: Path, host: str, port: int, key: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(path, "a", encoding="utf-8") as handle:
        if handle.tell() > 0 and not path.read_bytes().endswith(b"\n"):
            handle.write("\n")
        handle.write(known_hosts_entry(host, port, key))


@dataclass
class _HostKeyVerdict:
    """What the host-key check saw, for the error message after asyncssh refuses the key."""

    host: str = ""
    port: int = 22
    changed: bool = False
    key_type: str = ""
    fingerprint: str = ""
    recorded: List[str] = field(default_factory=list)


def _client_factory(known_hosts: Any, path: Path, trust_new_host: bool, verdict: _HostKeyVerdict) -> Callable[[], Any]:
    asyncssh = _asyncssh()

    class _Client(asyncssh.SSHClient):  # type: ignore[misc,name-defined]
        # asyncssh asks this only for a key that known_hosts does not list for the host
        def validate_host_public_key(self, host: str, addr: str, port: int, key: Any) -> bool:
            verdict.host, verdict.port = host, port
            verdict.key_type = key.get_algorithm()
            verdict.fingerprint = key.get_fingerprint()
            trusted = asyncssh.match_known_hosts(known_hosts, host, addr, port)[0]
            if trusted:
                verdict.changed = True
                return False
            if trust_new_host:
                _record_host_key(path, host, port, key)
                verdict.recorded.append(f"{host}:{port}")
                return True
            return False

    return _Client


def _host_key_error(address: SshAddress, verdict: _HostKeyVerdict, path: Path) -> HostKeyError:
    where = f"{verdict.host or address.host}:{verdict.port or address.port}"
    if verdict.changed:
        return HostKeyError(
            f"the host key of {where} has CHANGED ({verdict.key_type} {verdict.fingerprint}) from the one in {path}: "
            "the node may have been reinstalled, or someone is in the middle; check its key with its administrator, "
            f"then remove the old line (ssh-keygen -R '{_known_hosts_name(verdict, address)}' -f {path}) and attach again",
            changed=True,
        )
    return HostKeyError(
        f"{where} is not in {path} (its {verdict.key_type or 'host'} key is {verdict.fingerprint or 'unknown'}): "
        "if that is the node's key, attach again with --trust-new-host to record it",
        changed=False,
    )


def _known_hosts_name(verdict: _HostKeyVerdict, address: SshAddress) -> str:
    host, port = verdict.host or address.host, verdict.port or address.port
    return host if port == 22 else f"[{host}]:{port}"


async def open_connection(address: SshAddress, *, trust_new_host: bool = False, connect_timeout: float = 15.0, **connect_options: Any) -> "asyncssh.SSHClientConnection":
    """Connect and log in to `address`, checking its host key against known_hosts.

    An unknown host is refused (HostKeyError naming --trust-new-host) unless `trust_new_host`,
    which records its key in known_hosts; a changed key is always refused. Host aliases, users,
    ports and keys from ~/.ssh/config apply (asyncssh reads it; an explicit port other than 22
    wins). `jump` is opened first with the same keys and known_hosts and closes with this
    connection. `connect_options` go to asyncssh.connect as they are (keepalive_interval, ...).
    Errors: HostKeyError, KeyRefusedError, UnreachableError, all one line and SpecError (exit 2).
    """
    asyncssh = _asyncssh()
    tunnel = None
    if address.jump:
        bastion = parse_ssh_url(address.jump)
        bastion = SshAddress(bastion.user, bastion.host, bastion.port, address.identity_file, None, address.known_hosts)
        try:
            tunnel = await open_connection(bastion, trust_new_host=trust_new_host, connect_timeout=connect_timeout)
        except HostKeyError as exc:
            raise HostKeyError(f"jump host {bastion.url()}: {exc}", changed=exc.changed) from None
        except SshError as exc:
            raise type(exc)(f"jump host {bastion.url()}: {exc}") from None
    path = address.known_hosts_path()
    known_hosts = _load_known_hosts(path)
    verdict = _HostKeyVerdict()
    options: Dict[str, Any] = {
        "username": address.user,
        "known_hosts": known_hosts,
        "client_factory": _client_factory(known_hosts, path, trust_new_host, verdict),
        "connect_timeout": connect_timeout,
        # a dead link is noticed in about a minute even when nothing is being sent
        "keepalive_interval": 15,
        "keepalive_count_max": 4,
    }
    if address.port != 22:
        options["port"] = address.port
    if address.identity_file:
        options["client_keys"] = [address.identity_file]
    if tunnel is not None:
        options["tunnel"] = tunnel
    options.update(connect_options)
    try:
        connection = await asyncssh.connect(address.host, **options)
    except asyncssh.HostKeyNotVerifiable:
        _close_quietly(tunnel)
        raise _host_key_error(address, verdict, path) from None
    except asyncssh.PermissionDenied:
        _close_quietly(tunnel)
        keys = address.identity_file or "the default keys in ~/.ssh and the SSH agent"
        raise KeyRefusedError(
            f"{address.user}@{address.host}:{address.port} refused the key ({keys}): check --identity-file and that its public key "
            f"is in ~{address.user}/.ssh/authorized_keys on the node"
        ) from None
    except asyncssh.KeyImportError as exc:
        _close_quietly(tunnel)
        raise KeyRefusedError(f"cannot use the key {address.identity_file or '(default)'} ({exc}): give an unencrypted private key, or load it into ssh-agent") from None
    except (OSError, asyncio.TimeoutError, asyncssh.ConnectionLost, asyncssh.DisconnectError) as exc:
        _close_quietly(tunnel)
        raise UnreachableError(f"cannot reach {address.url()}{' via ' + address.jump if address.jump else ''} ({_why(exc, connect_timeout)}): {_unreachable_hint(exc)}") from None
    except asyncssh.Error as exc:  # key exchange, protocol: the two ends found nothing in common
        _close_quietly(tunnel)
        raise SshError(f"SSH to {address.url()} failed ({_why(exc, connect_timeout)}): check that it is an OpenSSH server and ssh -v {address.user}@{address.host} -p {address.port} works") from None
    if tunnel is not None:
        connection.set_tunnel(tunnel)  # closed with this connection
    return connection


def _close_quietly(connection: Any) -> None:
    if connection is not None:
        connection.close()


def _why(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return f"no answer in {timeout:g} s"
    if isinstance(exc, socket.gaierror):
        return "unknown host name"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    text = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc) or type(exc).__name__
    return str(text).splitlines()[0]


def _unreachable_hint(exc: BaseException) -> str:
    if isinstance(exc, socket.gaierror):
        return "check the host name (or its Host entry in ~/.ssh/config)"
    if isinstance(exc, ConnectionRefusedError):
        return "check the port and that sshd runs on the node"
    return "check the host, the port, that the node is up and that the network (VPN, firewall, --jump) lets SSH through"


# -- running commands ---------------------------------------------------------------------


@dataclass(frozen=True)
class CommandResult:
    exit_status: int
    stdout: str
    stderr: str

    def last_line(self) -> str:
        """The last non-empty line of stderr (else stdout): what a one-line error quotes."""
        for text in (self.stderr, self.stdout):
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            if lines:
                return lines[-1][:300]
        return f"exit status {self.exit_status}"


async def run_command(connection: Any, argv: "List[str] | Tuple[str, ...]", *, timeout: Optional[float] = 120.0, env_prefix: str = "") -> CommandResult:
    """Run argv on the node (quoted for its shell); the exit status, stdout and stderr."""
    command = env_prefix + " ".join(shlex.quote(str(part)) for part in argv)
    try:
        result = await asyncio.wait_for(connection.run(command, check=False), timeout)
    except asyncio.TimeoutError:
        raise SshError(f"'{' '.join(map(str, argv))[:120]}' did not finish on the node in {timeout:g} s: check the node's load and disk") from None
    status = result.exit_status if result.exit_status is not None else (128 + 9 if result.exit_signal else -1)
    return CommandResult(int(status), _text(result.stdout), _text(result.stderr))


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


# -- sync callers -----------------------------------------------------------------------------


def run_sync(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to its end from sync code, also where a loop already runs (a Jupyter kernel):
    there it runs on a new loop in a helper thread, since asyncio.run refuses a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_awaited(make))
    box: Dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(_awaited(make))
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="gaudi_nb-ssh", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


async def _awaited(make: Callable[[], Awaitable[T]]) -> T:
    return await make()
