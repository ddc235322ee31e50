"""A real OpenSSH server on loopback for tests: its own host key, one authorized client key, stoppable and restartable.

The node it serves is this machine, logged into as the current user (root here). Its sessions
get GAUDI_NB_HOME pointed at a folder of the test session (sshd_config SetEnv), so nothing a
test attaches, installs or runs on the "node" touches the real ~/.gaudi_nb; and this venv's bin
is on their PATH (behind whatever the user's shell start-up files put first), so the node has a
`python3` with torch, as a Gaudi node has Intel's, which the bootstrap layers its env on
instead of downloading torch. `netns` runs the server inside a network namespace (a second
"host" on this machine), as ../shared/TESTING.md describes.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, List, Optional

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"


def available() -> Optional[str]:
    """None when an sshd can run here, else why not."""
    if not Path(SSHD).exists():
        return "no OpenSSH server (apt-get install -y openssh-server)"
    if not Path(SSH_KEYGEN).exists():
        return "no ssh-keygen (apt-get install -y openssh-client)"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def keygen(path: Path) -> Path:
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "gaudi_nb-test", "-f", str(path)], check=True)
    return path


class Sshd:
    """One sshd process; `start()`, `stop()`, `restart()`, and `kill_sessions()` to drop the live connections."""

    def __init__(self, folder: Path, *, port: Optional[int] = None, address: str = "127.0.0.1", node_home: Optional[Path] = None,
                 path_prefix: Optional[str] = None, netns: Optional[str] = None) -> None:
        self.folder = Path(folder)
        self.netns = netns
        self.folder.mkdir(parents=True, exist_ok=True)
        self.address = address
        self.port = port or free_port()
        self.user = os.environ.get("USER") or "root"
        self.node_home = Path(node_home or self.folder / "node_home")
        self.path_prefix = path_prefix if path_prefix is not None else str(Path(sys.executable).parent)
        self.host_key = self.folder / "host_key"
        self.client_key = self.folder / "client_key"
        self.authorized_keys = self.folder / "authorized_keys"
        self.config = self.folder / "sshd_config"
        self.session_env: dict = {}  # more variables every session gets (session_env_set)
        self.log = self.folder / "sshd.log"
        self.process: Optional[subprocess.Popen] = None
        if not self.host_key.exists():
            keygen(self.host_key)
        if not self.client_key.exists():
            keygen(self.client_key)
        self.authorized_keys.write_text(self.client_key.with_suffix(".pub").read_text())
        self._write_config()

    # -- what a client needs ------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"ssh://{self.user}@{self.address}:{self.port}"

    def host_key_line(self) -> str:
        """This server's known_hosts line, as OpenSSH writes it for a port other than 22."""
        key = self.host_key.with_suffix(".pub").read_text().split()
        return f"[{self.address}]:{self.port} {key[0]} {key[1]}\n"

    def client_home(self, home: Path, *, trusted: bool = True, config: str = "") -> Path:
        """Make `home` a client's home: ~/.ssh/id_ed25519 (the authorized key), known_hosts (this
        server's key when `trusted`) and an optional ~/.ssh/config. Point HOME at it to use it."""
        ssh = Path(home) / ".ssh"
        ssh.mkdir(parents=True, exist_ok=True, mode=0o700)
        shutil.copyfile(self.client_key, ssh / "id_ed25519")
        os.chmod(ssh / "id_ed25519", 0o600)
        shutil.copyfile(self.client_key.with_suffix(".pub"), ssh / "id_ed25519.pub")
        (ssh / "known_hosts").write_text(self.host_key_line() if trusted else "")
        (ssh / "config").write_text(config)
        return Path(home)

    # -- the server ----------------------------------------------------------------------------
    def _write_config(self) -> None:
        node_path = ":".join(p for p in (self.path_prefix, "/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin") if p)
        self.config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    f"ListenAddress {self.address}",
                    f"HostKey {self.host_key}",
                    f"PidFile {self.folder / 'sshd.pid'}",
                    f"AuthorizedKeysFile {self.authorized_keys}",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password",
                    "UsePAM no",
                    "StrictModes no",
                    "Subsystem sftp internal-sftp",
                    "AllowTcpForwarding yes",
                    "MaxStartups 100:30:200",
                    "MaxSessions 100",
                    "LogLevel ERROR",
                    # PYTHONPATH: a checkout put first on the client's path (a worktree) is the node's gaudi_nb too
                    f"SetEnv GAUDI_NB_HOME={self.node_home} PATH={node_path}" + (f" PYTHONPATH={os.environ['PYTHONPATH']}" if os.environ.get("PYTHONPATH") else "")
                    + "".join(f" {name}={value}" for name, value in self.session_env.items()),
                    "",
                ]
            )
        )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 10.0) -> "Sshd":
        if self.running:
            return self
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege-separation directory
        log = open(self.log, "ab")
        # `ip netns exec` execs sshd, so the process (and its session children) are sshd's own
        self.process = subprocess.Popen([*self._in_netns(), SSHD, "-D", "-e", "-f", str(self.config)], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sshd exited with {self.process.returncode}: {self.log.read_text()[-2000:]}")
            if self._listening():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"sshd did not listen on {self.address}:{self.port} in {timeout} s")

    def _in_netns(self) -> List[str]:
        return ["ip", "netns", "exec", self.netns] if self.netns else []

    def _listening(self) -> bool:
        if not self.netns:
            try:
                with socket.create_connection((self.address, self.port), timeout=0.5):
                    return True
            except OSError:
                return False
        probe = f"import socket; socket.create_connection(({self.address!r}, {self.port}), 0.5).close()"
        return subprocess.run([*self._in_netns(), sys.executable, "-c", probe], capture_output=True).returncode == 0

    def stop(self) -> None:
        """Stop the listener and every session it serves (the sessions are its children)."""
        if self.process is None:
            return
        self.kill_sessions()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def restart(self) -> "Sshd":
        self.stop()
        return self.start()

    @contextlib.contextmanager
    def session_env_set(self, **env: str) -> Iterator["Sshd"]:
        """Sessions started inside the block also get `env` (a node's own settings, as its login environment
        would set them); the listener restarts to read it, and again after, without it."""
        self.session_env = dict(env)
        self._write_config()
        self.restart()
        try:
            yield self
        finally:
            self.session_env = {}
            self._write_config()
            self.restart()

    def session_pids(self) -> List[int]:
        """The sshd children serving live connections (one per connection)."""
        if not self.running:
            return []
        import psutil

        assert self.process is not None
        try:
            return [child.pid for child in psutil.Process(self.process.pid).children()]
        except psutil.NoSuchProcess:
            return []

    def kill_sessions(self) -> List[int]:
        """Kill the processes serving live connections: the clients see their links drop, the listener stays."""
        pids = self.session_pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return pids
