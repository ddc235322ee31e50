"""Nodes over SSH against a real sshd on loopback: attach (host keys, keys, jump hosts, ~/.ssh/config), bootstrap, preflight, the store's nodes, the CLI and the magic."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from gaudi_nb import __version__
from gaudi_nb.errors import NotFoundError, SpecError
from gaudi_nb.nodes import bootstrap
from gaudi_nb.nodes.bootstrap import Probe
from gaudi_nb.nodes.preflight import GIB, evaluate, failure_line, preflight
from gaudi_nb.nodes.ssh import parse_ssh_url
from gaudi_nb.store import RunStore

VENV_PYTHON = str(Path(sys.executable).parent / "python")  # has this gaudi_nb (the checkout, installed editable)


def gaudi_nb_cli(capsys, *args):
    """`gaudi-nb ARGS` in this process (its main(), so errors become one line and an exit code): (code, stdout, stderr)."""
    from gaudi_nb.cli import main

    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(result, *fragments):
    code, out, err = result
    assert code == 2, (code, out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def nothing_attached(capsys):
    code, out, _ = gaudi_nb_cli(capsys, "nodes", "list", "--json")
    assert code == 0 and json.loads(out) == []


# -- addresses -------------------------------------------------------------------------------


def test_ssh_urls_parse_and_bad_forms_say_the_right_form():
    address = parse_ssh_url("ssh://ubuntu@10.0.0.5:2222")
    assert (address.user, address.host, address.port, address.url()) == ("ubuntu", "10.0.0.5", 2222, "ssh://ubuntu@10.0.0.5:2222")
    assert parse_ssh_url("ssh://root@gaudi-node").url() == "ssh://root@gaudi-node:22"
    assert parse_ssh_url("ssh://root@[fd00::5]:2200").url() == "ssh://root@[fd00::5]:2200"
    assert parse_ssh_url("ssh://root@n", jump="ssh://me@bastion:2022").jump == "ssh://me@bastion:2022"
    for bad, message in (
        ("root@10.0.0.5", "write it as ssh://USER@HOST[:PORT]"),
        ("ssh://10.0.0.5", "names no user"),
        ("ssh://root@10.0.0.5:99999", "ssh://USER@HOST[:PORT]"),
        ("ssh://root@10.0.0.5/path", "more than a user, host and port"),
    ):
        with pytest.raises(SpecError, match=re.escape(message)):
            parse_ssh_url(bad)
    with pytest.raises(SpecError, match="write it as ssh://USER@HOST"):
        parse_ssh_url("ssh://root@n", jump="bastion")
    with pytest.raises(SpecError, match="identity file /no/such/key does not exist"):
        parse_ssh_url("ssh://root@n", identity_file="/no/such/key")


# -- the store's nodes -----------------------------------------------------------------------


def test_the_store_keeps_nodes(store_url):
    store = RunStore(store_url)
    record = {"name": "gaudi1", "url": "ssh://root@10.0.0.5:22", "user": "root", "host": "10.0.0.5", "port": 22, "accelerator": "hpu", "device_count": 8}
    added = store.add_node(record)
    assert added["owner"] and added["attached_at"] > 0 and added["python"] is None
    with pytest.raises(SpecError, match="'gaudi1' is attached already"):
        store.add_node(record)
    assert store.update_node("gaudi1", driver_version="1.24.0-x", python="/opt/py")["driver_version"] == "1.24.0-x"
    assert [n["name"] for n in store.list_nodes()] == ["gaudi1"] and store.get_node("gaudi1")["python"] == "/opt/py"
    with pytest.raises(SpecError, match="unknown node field"):
        store.update_node("gaudi1", cards=3)
    assert store.remove_node("gaudi1")["name"] == "gaudi1"
    with pytest.raises(NotFoundError, match="gaudi-nb nodes list"):
        store.get_node("gaudi1")
    with pytest.raises(NotFoundError, match="gaudi-nb nodes list"):
        store.remove_node("gaudi1")


# -- the wheel ---------------------------------------------------------------------------------


def test_the_wheel_is_this_clients_package_and_is_cached(tmp_path):
    wheel = bootstrap.build_wheel(tmp_path)
    assert wheel.name == f"gaudi_nb-{__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(f"gaudi_nb-{__version__}.dist-info/METADATA").decode()
        entry_points = archive.read(f"gaudi_nb-{__version__}.dist-info/entry_points.txt").decode()
    assert {"gaudi_nb/__init__.py", "gaudi_nb/nodes/bootstrap.py", "gaudi_nb/migrations/script.py.mako"} <= names
    assert not any("__pycache__" in name for name in names)
    assert "Requires-Dist: torch" in metadata and "gaudi-nb = gaudi_nb.cli:main" in entry_points
    assert bootstrap.build_wheel(tmp_path) == wheel  # cached by build id


# -- preflight (pure) --------------------------------------------------------------------------


def _probe(**facts):
    base = {"executable": "/n/env/bin/python", "python_version": "3.10.12", "gaudi_nb_version": __version__, "home": "/n/home", "disk_free_bytes": 100 * GIB, "modules": None}
    return Probe({**base, **facts})


def test_preflight_says_in_one_line_what_is_wrong():
    record = {"name": "g1", "url": "ssh://root@g1:22", "python": "/n/env/bin/python", "accelerator": "hpu"}
    gaudi = {"present": list(range(8)), "busy": {"3": [4242]}, "driver_version": "1.24.0", "firmware_version": "x"}
    assert failure_line(record, evaluate(record, _probe(modules=gaudi), {"devices": 4})) is None
    assert failure_line(record, evaluate(record, None)).startswith("node g1: python: /n/env/bin/python does not run: ")
    line = failure_line(record, evaluate(record, _probe(gaudi_nb_version="0.0.9", disk_free_bytes=1 * GIB, modules=gaudi), {"devices": 8}))
    assert "gaudi_nb: 0.0.9 on the node" in line and "disk: 1.0 GiB free in /n/home" in line
    assert "Gaudi cards: 7 of 8 free; busy: 3 (pid 4242)" in line and "wait for it to end" in line
    assert "\n" not in line
    assert "has 8: ask for fewer --devices" in failure_line(record, evaluate(record, _probe(modules=gaudi), {"devices": 16}))
    no_hlsmi = failure_line(record, evaluate(record, _probe()))
    assert "Gaudi cards: hl-smi did not answer" in no_hlsmi
    assert failure_line(dict(record, accelerator="cpu"), evaluate(dict(record, accelerator="cpu"), _probe())) is None
    missing = failure_line(record, evaluate(record, _probe(gaudi_nb_version=None, gaudi_nb_error="ModuleNotFoundError: No module named 'gaudi_nb'")))
    assert "gaudi_nb: missing in /n/env/bin/python" in missing


def test_preflight_refuses_first_generation_gaudi_with_a_stack_newer_than_1_21():
    """The node's probe reports its card and Gaudi software; DL1 is pinned to 1.21 (gaudi_stack.FIRST_GEN_PIN)."""
    record = {"name": "dl1", "url": "ssh://ubuntu@dl1:22", "python": "/n/env/bin/python", "accelerator": "hpu"}
    cards = {"present": list(range(8)), "busy": {}, "driver_version": "1.24.0", "firmware_version": "x"}
    line = failure_line(record, evaluate(record, _probe(modules=cards, stack=["HL-205", "1.24.0.272"]), {"devices": 8}))
    assert line == ("node dl1: Gaudi stack: first-generation Gaudi (HL-205) with Gaudi software 1.24.0.272: out of Intel's support matrix "
                    "since Gaudi software 1.22, and gaudi_nb pins first-generation Gaudi to 1.21: use an image with Gaudi software 1.21 "
                    "(gaudi-nb nodes provision aws --image AMI_ID), or a Gaudi 2 / Gaudi 3 node")
    passed = evaluate(record, _probe(modules=cards, stack=["HL-205", "1.21.0"]), {"devices": 8})
    assert failure_line(record, passed) is None
    (pin,) = [check for check in passed if check.name == "Gaudi stack"]
    assert "Gaudi software 1.21.0, within the pin; 1.21's pip set: PyTorch 2.6.0" in pin.found and "optimum-habana==1.18.1" in pin.found
    assert "HabanaAI/DeepSpeed.git@1.21.0" in pin.found
    # Gaudi 2 and 3 carry no pin; a node whose probe predates the stack report is not judged
    for stack in (["HL-225", "1.24.0"], ["HL-325L", "1.24.0"], None):
        assert "Gaudi stack" not in [c.name for c in evaluate(record, _probe(modules=cards, **({"stack": stack} if stack else {})), {"devices": 8})]


def test_preflight_across_gaudi_nodes_wants_whole_nodes_and_pdsh_on_node_0():
    record = {"name": "g1", "url": "ssh://root@g1:22", "python": "/n/env/bin/python", "accelerator": "hpu"}
    gaudi = {"present": list(range(8)), "busy": {}, "driver_version": "1.24.0", "firmware_version": "x"}
    across = {"devices": 8, "nodes": 2, "launcher": "auto"}
    assert failure_line(record, evaluate(record, _probe(modules=gaudi, pdsh="/usr/bin/pdsh"), across)) is None
    line = failure_line(record, evaluate(record, _probe(modules=gaudi, pdsh=None), across))
    assert line.startswith("node g1: pdsh: missing: DeepSpeed starts the other nodes") and "apt-get install pdsh" in line and "\n" not in line
    assert failure_line(record, evaluate(record, _probe(modules=gaudi, pdsh=None), across, first=False)) is None  # only node 0 runs pdsh
    assert failure_line(record, evaluate(record, _probe(modules=gaudi, pdsh=None), dict(across, launcher="torchrun"))) is None
    assert failure_line(record, evaluate(record, _probe(modules=gaudi, pdsh=None), {"devices": 8})) is None  # one node: no pdsh
    quad = failure_line(record, evaluate(record, _probe(modules=gaudi, pdsh="/usr/bin/pdsh"), dict(across, devices=4)))
    assert "Gaudi cards" in quad and "every card of each node" in quad and "--devices 8" in quad
    cpu = dict(record, accelerator="cpu")
    assert failure_line(cpu, evaluate(cpu, _probe(pdsh=None), dict(across, devices=2))) is None
    # the node's probe says where pdsh is (None: not on its PATH, as on this machine)
    import shutil
    import subprocess
    import sys

    printed = subprocess.run([sys.executable, "-c", bootstrap.PROBE], capture_output=True, text=True, timeout=60).stdout
    assert json.loads(printed.split("GAUDI_NB_PROBE ", 1)[1])["pdsh"] == shutil.which("pdsh")


# -- attach, list, check, detach over a real sshd -------------------------------------------------


def test_attach_list_check_detach(gaudi_home, ssh_home, sshd, capsys):
    started = time.monotonic()
    code, out, err = gaudi_nb_cli(capsys, "nodes", "attach", sshd.url, "--name", "loop", "--python", VENV_PYTHON)
    seconds = time.monotonic() - started
    assert code == 0, err
    assert "attached loop (" + sshd.url + ")" in out and "cpu" in out
    with capsys.disabled():
        print(f"\nattach with --python (no install): {seconds:.2f} s")

    code, out, _ = gaudi_nb_cli(capsys, "nodes", "list", "--json")
    (record,) = json.loads(out)
    assert record["name"] == "loop" and record["url"] == sshd.url and (record["user"], record["host"], record["port"]) == (sshd.user, "127.0.0.1", sshd.port)
    assert record["python"] == VENV_PYTHON and record["gaudi_nb_version"] == __version__
    assert record["accelerator"] == "cpu" and record["device_count"] == 0 and record["owner"]
    assert record["home"] == str(sshd.node_home)  # the node's GAUDI_NB_HOME, resolved on the node
    code, out, _ = gaudi_nb_cli(capsys, "nodes", "list")
    assert code == 0 and "loop" in out and sshd.url in out

    code, out, err = gaudi_nb_cli(capsys, "nodes", "check", "loop")
    assert code == 0, out + err
    lines = out.strip().splitlines()
    assert [line.split()[:2] for line in lines] == [["ok", "python"], ["ok", "gaudi_nb"], ["ok", "disk"], ["ok", "devices"]]
    preflight(RunStore().get_node("loop"), {"devices": 1})  # what a launch runs: nothing to say

    # attaching the same name again refreshes it; another address under that name is refused
    assert gaudi_nb_cli(capsys, "nodes", "attach", sshd.url, "--name", "loop", "--python", VENV_PYTHON)[0] == 0
    assert_one_line_error(gaudi_nb_cli(capsys, "nodes", "attach", "ssh://root@127.0.0.2:22", "--name", "loop"), "'loop' is attached already at " + sshd.url)

    code, out, _ = gaudi_nb_cli(capsys, "nodes", "detach", "loop")
    assert code == 0 and "detached loop" in out
    nothing_attached(capsys)
    code, _, err = gaudi_nb_cli(capsys, "nodes", "detach", "loop")
    assert code == 1 and "no node 'loop' is attached: gaudi-nb nodes list" in err


def test_a_node_whose_python_lost_gaudi_nb_fails_preflight_in_one_line(gaudi_home, ssh_home, sshd, capsys):
    store = RunStore()
    store.add_node({"name": "bare", "url": sshd.url, "user": sshd.user, "host": "127.0.0.1", "port": sshd.port, "python": "/usr/bin/python3", "accelerator": "cpu"})
    with pytest.raises(SpecError) as info:
        preflight(store.get_node("bare"), {"devices": 1})
    assert str(info.value).startswith("node bare: gaudi_nb: missing in /usr/bin/python3") and "\n" not in str(info.value)
    code, out, _ = gaudi_nb_cli(capsys, "nodes", "check", "bare")
    assert code == 1 and "FAIL gaudi_nb" in out and "ok   python" in out


def test_unknown_host_key_is_refused_until_trusted_and_then_recorded(gaudi_home, ssh_home, sshd, capsys):
    known_hosts = ssh_home / ".ssh" / "known_hosts"
    known_hosts.write_text("")
    assert_one_line_error(gaudi_nb_cli(capsys, "nodes", "attach", sshd.url, "--name", "n", "--python", VENV_PYTHON),
                          f"127.0.0.1:{sshd.port} is not in {known_hosts}", "--trust-new-host")
    nothing_attached(capsys)
    assert known_hosts.read_text() == ""
    code, _, err = gaudi_nb_cli(capsys, "nodes", "attach", sshd.url, "--name", "n", "--python", VENV_PYTHON, "--trust-new-host")
    assert code == 0, err
    assert known_hosts.read_text() == sshd.host_key_line()  # the line OpenSSH itself would write
    subprocess.run(["ssh-keygen", "-F", f"[127.0.0.1]:{sshd.port}", "-f", str(known_hosts)], check=True, capture_output=True)


def test_a_changed_host_key_is_always_refused(gaudi_home, ssh_home, sshd, tmp_path, capsys):
    import sshd as sshd_module

    other = sshd_module.keygen(tmp_path / "other_host_key")
    kind, key = other.with_suffix(".pub").read_text().split()[:2]
    known_hosts = ssh_home / ".ssh" / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {kind} {key}\n")
    for extra in ((), ("--trust-new-host",)):
        assert_one_line_error(gaudi_nb_cli(capsys, "nodes", "attach", sshd.url, "--name", "n", "--python", VENV_PYTHON, *extra),
                              "has CHANGED", "ssh-keygen -R")
    assert known_hosts.read_text() == f"[127.0.0.1]:{sshd.port} {kind} {key}\n"
    nothing_attached(capsys)


def test_a_refused_key_and_an_unreachable_host_are_one_line(gaudi_home, ssh_home, sshd, tmp_path, capsys):
    import sshd as sshd_module

    stranger = sshd_module.keygen(tmp_path / "stranger")
    assert_one_line_error(gaudi_nb_cli(capsys, "nodes", "attach", sshd.url, "--name", "n", "--identity-file", str(stranger)),
                          "refused the key", str(stranger), "authorized_keys")
    port = sshd_module.free_port()
    assert_one_line_error(gaudi_nb_cli(capsys, "nodes", "attach", f"ssh://root@127.0.0.1:{port}", "--name", "n"),
                          f"cannot reach ssh://root@127.0.0.1:{port}", "connection refused", "sshd runs")
    assert_one_line_error(gaudi_nb_cli(capsys, "nodes", "attach", "ssh://root@no-such-node.invalid", "--name", "n"), "unknown host name")
    assert_one_line_error(gaudi_nb_cli(capsys, "nodes", "attach", "root@127.0.0.1", "--name", "n"), "ssh://USER@HOST[:PORT]")
    assert_one_line_error(gaudi_nb_cli(capsys, "nodes", "attach", sshd.url, "--name", "local"), "cannot name a node")
    nothing_attached(capsys)


def test_the_sshd_going_away_is_unreachable_and_coming_back_works(gaudi_home, ssh_home, sshd, capsys):
    sshd.stop()
    try:
        assert_one_line_error(gaudi_nb_cli(capsys, "nodes", "attach", sshd.url, "--name", "n", "--python", VENV_PYTHON), "cannot reach", "connection refused")
    finally:
        sshd.start()
    assert gaudi_nb_cli(capsys, "nodes", "attach", sshd.url, "--name", "n", "--python", VENV_PYTHON)[0] == 0


def test_a_python_without_this_gaudi_nb_is_refused(gaudi_home, ssh_home, sshd, tmp_path, capsys):
    older = tmp_path / "older"
    (older / "gaudi_nb").mkdir(parents=True)
    (older / "gaudi_nb" / "__init__.py").write_text('__version__ = "0.0.1"\n')
    wrapper = tmp_path / "python-with-old-gaudi_nb"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH={older} exec /usr/bin/python3 "$@"\n')
    wrapper.chmod(0o755)
    for python, fragments in (
        ("/no/such/python", ("--python /no/such/python does not run on the node",)),
        ("/usr/bin/python3", ("--python /usr/bin/python3 has no gaudi_nb", f"pip install gaudi_nb=={__version__}", "leave out --python")),
        (str(wrapper), (f"has gaudi_nb 0.0.1 and this client is {__version__}",)),
    ):
        assert_one_line_error(gaudi_nb_cli(capsys, "nodes", "attach", sshd.url, "--name", "n", "--python", python), *fragments)
    nothing_attached(capsys)


def test_host_aliases_from_ssh_config_and_jump_hosts(gaudi_home, ssh_home, sshd, capsys):
    (ssh_home / ".ssh" / "config").write_text(f"Host gaudi-test\n  HostName 127.0.0.1\n  Port {sshd.port}\n")
    code, out, err = gaudi_nb_cli(capsys, "nodes", "attach", f"ssh://{sshd.user}@gaudi-test", "--python", VENV_PYTHON, "--json")
    assert code == 0, err
    assert json.loads(out)["name"] == "gaudi-test" and json.loads(out)["url"] == f"ssh://{sshd.user}@gaudi-test:22"
    # the loopback sshd is its own bastion: a TCP forward through it to itself
    code, out, err = gaudi_nb_cli(capsys, "nodes", "attach", sshd.url, "--name", "via-bastion", "--jump", sshd.url, "--python", VENV_PYTHON, "--json")
    assert code == 0, err
    assert json.loads(out)["jump"] == sshd.url
    code, out, _ = gaudi_nb_cli(capsys, "nodes", "check", "via-bastion")
    assert code == 0 and "FAIL" not in out


@pytest.mark.slow  # builds this client's wheel and installs it, with torch, into a fresh venv on the node
def test_attach_without_python_installs_this_build_once_and_reuses_it(node_install, gaudi_home, ssh_home, sshd, capsys):
    first = node_install["record"]
    env_python = str(sshd.node_home / "env" / "bin" / "python")
    assert first["python"] == env_python and first["home"] == str(sshd.node_home)  # not the real ~/.gaudi_nb
    assert any(message.startswith(f"installing gaudi_nb {__version__}") for message in node_install["messages"]), node_install["messages"]
    marker = json.loads((sshd.node_home / "env" / bootstrap.BUILD_MARKER).read_text())
    assert marker["build"] == bootstrap.client_build()[1]
    # the env has this client's code (the wheel), not the checkout it came from
    where = subprocess.run([env_python, "-c", "import gaudi_nb, torch; print(gaudi_nb.__file__)"], capture_output=True, text=True, check=True, cwd=sshd.node_home).stdout
    assert where.startswith(str(sshd.node_home / "env"))

    started = time.monotonic()
    code, out, err = gaudi_nb_cli(capsys, "nodes", "attach", sshd.url, "--name", "again")
    again = time.monotonic() - started
    assert code == 0, err
    assert "is installed in" in out and "already" in out and "installing" not in out
    assert RunStore().get_node("again")["python"] == env_python
    assert json.loads((sshd.node_home / "env" / bootstrap.BUILD_MARKER).read_text())["installed_at"] == marker["installed_at"]
    with capsys.disabled():
        print(f"\nattach with install: {node_install['seconds']:.2f} s; again, reusing the env: {again:.2f} s")
    code, out, _ = gaudi_nb_cli(capsys, "nodes", "check", "again")
    assert code == 0 and "FAIL" not in out


# -- the public face and the magic ---------------------------------------------------------


def test_attach_is_public_with_the_cli_keywords():
    import inspect

    import gaudi_nb

    assert "attach" in gaudi_nb.__all__
    parameters = inspect.signature(gaudi_nb.attach).parameters
    assert {"name", "identity_file", "jump", "python", "trust_new_host", "store"} <= set(parameters)


def test_the_magic_attaches_a_node_and_makes_it_the_target(gaudi_home, ssh_home, sshd, tmp_path, monkeypatch):
    from IPython.core.error import UsageError
    from IPython.core.getipython import get_ipython
    from IPython.testing.globalipapp import start_ipython
    from IPython.utils.capture import capture_output

    monkeypatch.chdir(tmp_path)
    start_ipython()
    shell = get_ipython()
    shell.run_line_magic("load_ext", "gaudi_nb")
    magics = shell.magics_manager.registry["GaudiMagics"]
    try:
        with capture_output() as out:
            shell.run_line_magic("gaudi_attach", f"{sshd.url} --name nb-node --python {VENV_PYTHON}")
        assert "attached: nb-node (" + sshd.url in out.stdout
        assert magics.target == "nb-node" and RunStore().get_node("nb-node")["python"] == VENV_PYTHON
        with pytest.raises(UsageError) as info:
            shell.run_line_magic("gaudi_attach", f"ssh://root@127.0.0.1:{sshd.port} --name nb-other --identity-file {tmp_path}")
        assert "\n" not in str(info.value) and magics.target == "nb-node"
        with pytest.raises(UsageError, match="only with an ssh://"):
            shell.run_line_magic("gaudi_attach", "local --name x")
        with capture_output() as out:
            shell.run_line_magic("gaudi_attach", "nb-node")  # an attached node, by name
        assert magics.target == "nb-node" and "attached: nb-node" in out.stdout
        with pytest.raises(UsageError, match="no node 'nope' is attached"):
            shell.run_line_magic("gaudi_attach", "nope")
        with pytest.raises(UsageError, match="gaudi-nb nodes provision aws"):
            shell.run_line_magic("gaudi_attach", "aws:dl1.24xlarge")
        shell.run_line_magic("gaudi_attach", "local")
        assert magics.target == "local"
    finally:
        magics.target = None


def test_the_installed_cli_exits_2_with_one_line(gaudi_home, ssh_home, sshd):
    """The same through the real `gaudi-nb` program, as a user's shell runs it."""
    env = dict(os.environ)
    result = subprocess.run([str(Path(sys.executable).parent / "gaudi-nb"), "nodes", "attach", sshd.url, "--name", "n", "--identity-file", "/no/key"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0 and "identity file /no/key does not exist" in result.stderr
