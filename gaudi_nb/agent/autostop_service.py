"""Autostop as a service on its machine: one daemon per home (a lock, a pid file), started detached and again
at every boot (a systemd unit, else an @reboot crontab line), and its command line (python -m gaudi_nb.agent.autostop)."""
from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..errors import GaudiNbError
from .autostop import MARKER, Autostop, AutostopConfig, autostop_dir, load_config, read_json, read_last_action, read_status, write_json

UNIT = "gaudi-nb-autostop.service"
CRON_MARKER = "# gaudi_nb autostop"
# Before it had its name, autostop was gaudi_nb.nodes.watchdog, with its files under <home>/watchdog/, this unit
# and this crontab marker: start() ends and uninstalls that one, so a machine provisioned then runs one daemon, not two.
OLD_MARKER = "gaudi_nb.nodes.watchdog"
OLD_UNIT = "gaudi-nb-watchdog.service"
OLD_CRON_MARKER = "# gaudi_nb watchdog"


# -- one per home -------------------------------------------------------------------------------

def _take_lock(directory: Path, name: str, blocking: bool) -> Optional[Any]:
    directory.mkdir(parents=True, exist_ok=True)
    handle = open(directory / name, "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except OSError:
        handle.close()
        return None
    return handle


def run(path: "str | Path") -> int:
    """The node-side loop (`run --config PATH`); one per home (a lock), until killed."""
    config = load_config(path)
    os.environ.update({str(k): str(v) for k, v in (config.environment or {}).items()})
    home = Path(config.home or ".")
    lock = _take_lock(autostop_dir(home), "run.lock", blocking=False)
    if lock is None:
        sys.stderr.write(f"autostop already runs for {home}; not starting another\n")
        return 0
    write_json(autostop_dir(home) / "autostop.pid", {"pid": os.getpid(), "config_sha256": _sha(Path(path)), "started_at": time.time(), "python": sys.executable})
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    Autostop(config, config_file=Path(path)).run_forever()
    return 0


def _sha(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""


# -- starting it on the node: detached now, and again after a reboot ---------------------------------


def _running(home: Path) -> Optional[Dict[str, Any]]:
    from .liveness import process_alive

    info = read_json(autostop_dir(home) / "autostop.pid")
    if info and process_alive(int(info.get("pid") or 0), MARKER):
        return info
    return None


def _end(pid: int, grace_s: float = 5.0, marker: str = MARKER) -> None:
    from .liveness import process_alive

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except OSError:
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and process_alive(pid, marker):
            time.sleep(0.1)
        if not process_alive(pid, marker):
            return


def _run_argv(python: str, path: Path) -> List[str]:
    return [python, "-m", MARKER, "run", "--config", str(path)]


def _quiet(argv: List[str], **options: Any) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, **options)


def _systemd_is_init() -> bool:
    try:
        return Path("/proc/1/comm").read_text().strip() == "systemd" and shutil.which("systemctl") is not None
    except OSError:
        return False


def systemd_unit(python: str, path: Path, home: Path, *, user_unit: bool) -> str:
    """The unit that starts autostop at boot and again if it ever exits with an error."""
    command = " ".join(shlex.quote(p) for p in _run_argv(python, path))
    return (
        "[Unit]\n"
        "Description=gaudi_nb autostop: stops this machine when idle or over budget\n"
        "After=network-online.target\n"
        "Wants=network-online.target\n\n"
        "[Service]\n"
        f"Environment=GAUDI_NB_HOME={home}\n"
        f"WorkingDirectory={autostop_dir(home)}\n"
        f"ExecStart={command}\n"
        "Restart=on-failure\n"
        "RestartSec=10\n\n"
        "[Install]\n"
        f"WantedBy={'default.target' if user_unit else 'multi-user.target'}\n"
    )


def cron_line(python: str, path: Path, home: Path) -> str:
    """An @reboot line for the user's crontab; the marker names the home, so one line per home is kept."""
    folder = autostop_dir(home)
    command = " ".join(shlex.quote(p) for p in _run_argv(python, path))
    return f"@reboot cd {shlex.quote(str(folder))} && GAUDI_NB_HOME={shlex.quote(str(home))} {command} >> {shlex.quote(str(folder / 'autostop.log'))} 2>&1 {CRON_MARKER} {home}"


def with_cron_line(crontab: str, line: str, home: Path) -> str:
    """The crontab with this home's autostop line replaced (other lines kept as they are)."""
    kept = [row for row in crontab.splitlines() if not row.rstrip().endswith(f"{CRON_MARKER} {home}")]
    return "\n".join([*kept, line]) + "\n"


def _install_systemd(python: str, path: Path, home: Path) -> Tuple[Optional[str], str]:
    """(how, note): "systemd" once the unit is enabled, else None and why not."""
    root = os.geteuid() == 0
    scope: List[str] = [] if root else ["--user"]
    if root:
        unit_path = Path("/etc/systemd/system") / UNIT
    else:
        user = pwd.getpwuid(os.getuid()).pw_name
        linger = _quiet(["loginctl", "show-user", user, "--property=Linger"]) if shutil.which("loginctl") else None
        if linger is None or "Linger=yes" not in linger.stdout:
            # a user's units start at boot only with lingering on; a user may be allowed to turn it on
            if shutil.which("loginctl") is None or _quiet(["loginctl", "enable-linger", user]).returncode != 0:
                return None, "systemd runs, but user units do not start at boot here (loginctl enable-linger was refused)"
        unit_path = Path("~/.config/systemd/user").expanduser() / UNIT
    try:
        unit_path.parent.mkdir(parents=True, exist_ok=True)
        unit_path.write_text(systemd_unit(python, path, home, user_unit=not root))
    except OSError as exc:
        return None, f"cannot write the systemd unit {unit_path} ({exc})"
    for argv in (["systemctl", *scope, "daemon-reload"], ["systemctl", *scope, "enable", UNIT]):
        done = _quiet(argv)
        if done.returncode != 0:
            return None, f"{' '.join(argv)} failed ({(done.stderr or done.stdout).strip()[:200]})"
    return "systemd", f"systemd unit {unit_path} (enabled)"


def _install_cron(python: str, path: Path, home: Path) -> Tuple[Optional[str], str]:
    if shutil.which("crontab") is None:
        return None, "no crontab on this node"
    listed = _quiet(["crontab", "-l"])
    current = listed.stdout if listed.returncode == 0 else ""  # exit 1: no crontab yet
    done = _quiet(["crontab", "-"], input=with_cron_line(current, cron_line(python, path, home), home))
    if done.returncode != 0:
        return None, f"crontab refused the @reboot line ({(done.stderr or done.stdout).strip()[:200]})"
    return "crontab", "an @reboot line in the user's crontab"


def _retire_watchdog(home: Path) -> None:
    """End and uninstall this home's daemon from before the rename (OLD_MARKER), where the machine has one."""
    from .liveness import process_alive

    info = read_json(home / "watchdog" / "watchdog.pid")
    if info and process_alive(int(info.get("pid") or 0), OLD_MARKER):
        _end(int(info["pid"]), marker=OLD_MARKER)
    old_line = f"{OLD_CRON_MARKER} {home}"
    listed = _quiet(["crontab", "-l"]) if shutil.which("crontab") else None
    if listed is not None and listed.returncode == 0 and any(row.rstrip().endswith(old_line) for row in listed.stdout.splitlines()):
        kept = [row for row in listed.stdout.splitlines() if not row.rstrip().endswith(old_line)]
        _quiet(["crontab", "-"], input="".join(f"{row}\n" for row in kept))
    root = os.geteuid() == 0
    unit_path = (Path("/etc/systemd/system") if root else Path("~/.config/systemd/user").expanduser()) / OLD_UNIT
    if unit_path.exists() and shutil.which("systemctl"):
        _quiet(["systemctl", *([] if root else ["--user"]), "disable", "--now", OLD_UNIT])
        try:
            unit_path.unlink()
        except OSError:
            pass


def _start_detached(python: str, path: Path, home: Path) -> int:
    folder = autostop_dir(home)
    with open(folder / "autostop.log", "ab") as log:
        process = subprocess.Popen(
            _run_argv(python, path),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own session: the SSH session's end does not reach it
            close_fds=True,
            # python -m puts the working folder first on the import path: a folder holding a
            # `gaudi_nb` directory (a checkout) must not replace the installed package
            cwd=str(folder),
            env={**os.environ, "GAUDI_NB_HOME": str(home)},
        )
    return process.pid


def _wait_for_pid(home: Path, timeout_s: float = 15.0, not_pid: Optional[int] = None) -> Optional[Dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = _running(home)
        if info and info.get("pid") != not_pid:
            return info
        time.sleep(0.1)
    return None


def start(path: "str | Path", *, python: Optional[str] = None, reboot: bool = True) -> Dict[str, Any]:
    """Node side of start_on_node: start autostop for the config at `path`, and make it start at boot.

    Idempotent: an autostop already running with the same config and Python is kept; one with
    another config is replaced. Returns {pid, started: "started" | "kept" | "replaced",
    survives_reboot, how ("systemd" | "crontab" | None), note, log}.
    """
    path = Path(path).resolve()
    config = load_config(path)
    home = Path(config.home or path.parent.parent)
    python = python or sys.executable
    cannot = cannot_act(config)
    lock = _take_lock(autostop_dir(home), "start.lock", blocking=True)  # two starts at once: one after the other
    try:
        _retire_watchdog(home)
        how, note = (None, "not asked to survive a reboot")
        if reboot:
            how, note = _install_systemd(python, path, home) if _systemd_is_init() else (None, "systemd is not PID 1")
            if how is None:
                cron_how, cron_note = _install_cron(python, path, home)
                how, note = cron_how, (cron_note if cron_how else f"{note}; {cron_note}")
            if how is None:
                note += f": autostop will not start again after a reboot (start it again with {MARKER} start --config {path})"
        current = _running(home)
        started = "started"
        if current is not None:
            if current.get("config_sha256") == _sha(path) and current.get("python") == python:
                return _answer(current, "kept", how, note, home, cannot)
            _end(int(current["pid"]))
            started = "replaced"
        if how == "systemd":
            scope = [] if os.geteuid() == 0 else ["--user"]
            done = _quiet(["systemctl", *scope, "restart", UNIT])
            if done.returncode != 0:
                note += f"; systemctl restart failed ({done.stderr.strip()[:200]}), started detached instead"
                _start_detached(python, path, home)
        else:
            _start_detached(python, path, home)
        info = _wait_for_pid(home)
        if info is None:
            raise GaudiNbError(f"autostop did not start on this node: see {autostop_dir(home) / 'autostop.log'}")
        return _answer(info, started, how, note, home, cannot)
    finally:
        if lock is not None:
            lock.close()


def cannot_act(config: AutostopConfig) -> Optional[str]:
    """Why this machine's own credentials may not stop (or terminate) it, asked of its cloud without acting; None when they may."""
    os.environ.update({str(k): str(v) for k, v in (config.environment or {}).items()})  # where the loop reaches the cloud
    try:
        from ..nodes.providers import provider

        return provider(config.provider, config.region).may_act(config.instance_id, config.action)
    except GaudiNbError as exc:  # the provider's SDK is missing here, say
        return str(exc)


def _answer(info: Dict[str, Any], started: str, how: Optional[str], note: str, home: Path, cannot: Optional[str]) -> Dict[str, Any]:
    return {"pid": info.get("pid"), "started": started, "survives_reboot": how is not None, "how": how, "note": note, "log": str(autostop_dir(home) / "autostop.log"),
            "may_act": cannot is None, "cannot_act": cannot}


def stop(home: "str | Path") -> Dict[str, Any]:
    """End the running autostop (it starts again at boot if start installed that)."""
    info = _running(Path(home))
    if info is None:
        return {"stopped": False}
    _end(int(info["pid"]))
    return {"stopped": True, "pid": info["pid"]}


# -- command line (run on the node) -------------------------------------------------------------


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MARKER}", description="The node's autostop: stop or terminate this machine when idle or over budget.")
    commands = parser.add_subparsers(dest="command", required=True)
    loop = commands.add_parser("run", help="watch in the foreground (what start runs detached)")
    loop.add_argument("--config", required=True, type=Path)
    begin = commands.add_parser("start", help="start autostop detached and at every boot; prints one JSON line")
    begin.add_argument("--config", required=True, type=Path)
    begin.add_argument("--config-stdin", action="store_true", help="write the config read from stdin to --config first")
    begin.add_argument("--no-reboot", action="store_true", help="do not install a systemd unit or crontab line")
    for name, text in (("status", "the latest check, one JSON line"), ("last-action", "what it last did and why, one JSON line"), ("stop", "end the running autostop")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--home", type=Path, default=None, help="the node's GAUDI_NB_HOME (default: $GAUDI_NB_HOME)")
    args = parser.parse_args(argv)

    if args.command == "run":
        return run(args.config)
    if args.command == "start":
        if args.config_stdin:
            data = json.loads(sys.stdin.read())
            AutostopConfig.from_dict(data)
            write_json(args.config, data)
        answer: Any = start(args.config, reboot=not args.no_reboot)
    else:
        home = (args.home or Path(os.environ.get("GAUDI_NB_HOME", "~/.gaudi_nb"))).expanduser()
        if args.command == "status":
            answer = {**(read_status(home) or {}), "running": _running(home) is not None}
        elif args.command == "last-action":
            answer = read_last_action(home)
        else:
            answer = stop(home)
    sys.stdout.write(json.dumps(answer) + "\n")
    return 0


def command_line() -> None:
    """`python -m gaudi_nb.agent.autostop ...`: a GaudiNbError is its one line on stderr and exit status 2."""
    try:
        sys.exit(main())
    except GaudiNbError as exc:
        sys.stderr.write(f"{exc}\n")
        sys.exit(2)
