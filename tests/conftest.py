"""Shared fixtures: an isolated GAUDI_NB_HOME per test, and the real PostgreSQL server .ci/run starts."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

import pytest

# One thread per CPU rank in the suite (a user's own OMP_NUM_THREADS stands, as gaudi_nb's launch plan keeps it): two
# xdist workers share this machine's cores, and a rank that takes every core for itself (the plan's default) makes
# its OpenMP threads spin-wait against the other worker's, which costs CPU and buys no speed on tiny models.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def free_port() -> int:
    """A port nothing listens on now (a fixed port fails when another suite runs at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_http(url: str, process: "subprocess.Popen[Any]", log: Path, what: str, timeout: float = 90) -> None:
    """Wait until a server we started answers url; if it exits or never answers, kill it and raise with its log's tail."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"{what} did not start:\n" + log.read_text(errors="replace")[-3000:]) from None
            time.sleep(0.5)


def wait_for(predicate: Callable[[], Any], timeout: float = 120, poll_s: float = 0.1, what: str = "the condition") -> Any:
    """Poll until predicate() returns something true and return it; fail naming `what` after timeout seconds.
    Tests wait on a condition, never for a fixed time: a loaded machine is slower, never wrong."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll_s)


REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(autouse=True)
def events_follow_the_contract(request, tmp_path):
    """After each test, every complete line of every events.jsonl under its tmp_path (GAUDI_NB_HOME lives
    there: runs, node mirrors, merged streams) must parse through the event contract. A test that writes a
    broken line on purpose says so with @pytest.mark.breaks_event_contract."""
    yield
    if request.node.get_closest_marker("breaks_event_contract") is not None:
        return
    broken = [problem for path in sorted(tmp_path.rglob("events.jsonl")) if (problem := first_broken_event(path)) is not None]
    if broken:
        pytest.fail("events that break the contract (gaudi_nb/events/contract.py):\n" + "\n".join(broken), pytrace=False)


def first_broken_event(path: Path) -> str | None:
    """'path:line: why' for the first complete line of an events file that breaks the contract, or None."""
    from gaudi_nb import jsontext
    from gaudi_nb.events import parse

    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]  # a line still being written is not checked
    for number, line in enumerate(complete.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            parse(jsontext.loads(line))
        except ValueError as exc:  # JSONDecodeError is a ValueError too
            return f"{path}:{number}: {exc}"
    return None


@pytest.fixture
def gaudi_home(tmp_path, monkeypatch):
    home = tmp_path / "gaudi_home"
    monkeypatch.setenv("GAUDI_NB_HOME", str(home))
    monkeypatch.delenv("GAUDI_NB_STORE_URL", raising=False)
    return home


def postgres_url() -> str | None:
    """The test server's URL; in CI it must be there (a missing server is a failure, not a skip)."""
    url = os.environ.get("GAUDI_NB_TEST_POSTGRES_URL", "postgresql+psycopg://gaudi:gaudi@127.0.0.1:5432/gaudi_test")
    try:
        import sqlalchemy

        engine = sqlalchemy.create_engine(url)
        with engine.connect():
            pass
        engine.dispose()
        return url
    except Exception as exc:
        if os.environ.get("CI"):
            raise RuntimeError(f"PostgreSQL at {url} is not reachable in CI ({exc}); .ci/run starts it") from exc
        return None


def reset_postgres(url: str) -> None:
    """Empty the test database: every table (alembic_version too), sequence and type a test left, and the cached engine."""
    import sqlalchemy

    import gaudi_nb.store as store_module

    cached = store_module._engines.pop(url, None)
    if cached is not None:
        cached.dispose()  # its pooled connections would otherwise outlive the schema they saw
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP SCHEMA public CASCADE")
        connection.exec_driver_sql("CREATE SCHEMA public")
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
        yield url
        import gaudi_nb.store as store_module

        cached = store_module._engines.pop(url, None)
        if cached is not None:
            cached.dispose()
        return
    url = postgres_url()
    if url is None:
        pytest.skip("no PostgreSQL server on 127.0.0.1:5432 (./scripts/setup-and-test starts one)")
    reset_postgres(url)  # whatever an earlier run left, even one that was killed
    yield url
    reset_postgres(url)


# -- a real OpenSSH server on loopback (tests/sshd.py): one per test session ----------------
# The node it serves is this machine; its sessions get GAUDI_NB_HOME set to a folder of the
# test session, so the node's env (<node home>/env) and its runs never touch ~/.gaudi_nb.


@pytest.fixture(scope="session")
def sshd_server(tmp_path_factory):
    import sshd as sshd_module

    why = sshd_module.available()
    if why:
        if os.environ.get("CI"):
            raise RuntimeError(f"sshd cannot run in CI: {why}; scripts/setup-and-test installs openssh-server")
        pytest.skip(why)
    server = sshd_module.Sshd(tmp_path_factory.mktemp("sshd")).start()
    yield server
    server.stop()


@pytest.fixture
def sshd(sshd_server):
    """The session's sshd, listening (restarted if an earlier test stopped it)."""
    return sshd_server.start()


@pytest.fixture
def ssh_home(sshd, tmp_path, monkeypatch):
    """A client's HOME: ~/.ssh holds the sshd's authorized key (id_ed25519) and known_hosts trusting it.

    HOME is what asyncssh reads ~/.ssh/config, known_hosts and the default keys from; the SSH
    agent is hidden so only these keys are offered.
    """
    home = sshd.client_home(tmp_path / "client_home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return home


@pytest.fixture(scope="session")
def node_install(sshd_server, tmp_path_factory):
    """The session's one install of this client's build into the node's <GAUDI_NB_HOME>/env, through a
    real attach without --python: {seconds, messages, record}. Tests that need the node's env use it."""
    import shutil
    import time

    from gaudi_nb.nodes.attach import attach
    from gaudi_nb.store import RunStore

    sshd_server.start()
    shutil.rmtree(sshd_server.node_home / "env", ignore_errors=True)  # measured from nothing, whoever came first
    home = sshd_server.client_home(tmp_path_factory.mktemp("install_client"))
    store_url = f"sqlite:///{tmp_path_factory.mktemp('install_store') / 'store.db'}"
    messages: list = []
    saved = {name: os.environ.get(name) for name in ("HOME", "SSH_AUTH_SOCK")}
    os.environ["HOME"] = str(home)
    os.environ.pop("SSH_AUTH_SOCK", None)
    try:
        started = time.monotonic()
        record = attach(sshd_server.url, name="installed", store=RunStore(store_url), progress=messages.append)
        seconds = time.monotonic() - started
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return {"seconds": seconds, "messages": messages, "record": record, "client_home": home}


# -- two hosts on this machine (tests/netns.py), an sshd in each: a run across two nodes ----------------


@pytest.fixture(scope="session")
def two_hosts():
    """Two network namespaces on a bridge (tests/netns.py); skipped where `ip netns` cannot be used, but never in CI."""
    import netns
    import sshd as sshd_module

    why = netns.available() or sshd_module.available()
    if why:
        if os.environ.get("CI"):
            raise RuntimeError(f"two hosts cannot be made in CI: {why}; scripts/setup-and-test runs as root with iproute2 and openssh-server")
        pytest.skip(why)
    hosts = netns.TwoHosts().create()
    yield hosts
    hosts.close()


def _sshd_in_each_namespace(two_hosts, tmp_path_factory, prefix, **options):
    """One sshd in each namespace, listening on its address there; both accept the first one's client key."""
    import sshd as sshd_module

    servers = [
        sshd_module.Sshd(tmp_path_factory.mktemp(f"{prefix}{i}"), address=address, netns=namespace, **options)
        for i, (address, namespace) in enumerate(zip(two_hosts.addresses, two_hosts.namespaces, strict=True))
    ]
    servers[1].authorized_keys.write_text(servers[0].client_key.with_suffix(".pub").read_text())
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(scope="session")
def netns_sshds(two_hosts, tmp_path_factory):
    """One sshd in each namespace, listening on its address there; both accept the first one's client key."""
    yield from _sshd_in_each_namespace(two_hosts, tmp_path_factory, "sshd-host")


@pytest.fixture(scope="session")
def shared_home_sshds(two_hosts, tmp_path_factory):
    """One more sshd in each namespace whose sessions share one GAUDI_NB_HOME: two machines with one NFS home."""
    yield from _sshd_in_each_namespace(two_hosts, tmp_path_factory, "sshd-shared", node_home=tmp_path_factory.mktemp("shared_node_home"))


def _attach_both(servers, names, tmp_path, monkeypatch):
    import gaudi_nb
    from gaudi_nb.nodes import link

    first, second = servers
    home = first.client_home(tmp_path / "client_home")
    (home / ".ssh" / "known_hosts").write_text(first.host_key_line() + second.host_key_line())
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    link._links = None
    for server, name in zip(servers, names, strict=True):
        gaudi_nb.attach(server.url, name=name, python=sys.executable)


@pytest.fixture
def two_nodes_one_home(gaudi_home, shared_home_sshds, tmp_path, monkeypatch):
    """Both hosts attached as `sa` and `sb`, their sessions sharing one GAUDI_NB_HOME."""
    from gaudi_nb.nodes import link

    _attach_both(shared_home_sshds, ["sa", "sb"], tmp_path, monkeypatch)
    yield ["sa", "sb"]
    link._links = None


@pytest.fixture
def two_nodes(gaudi_home, netns_sshds, tmp_path, monkeypatch):
    """Both hosts attached (with this venv's Python, as the one-node tests do) as nodes `na` and `nb`; the client's HOME trusts both."""
    from gaudi_nb.nodes import link

    _attach_both(netns_sshds, ["na", "nb"], tmp_path, monkeypatch)
    yield ["na", "nb"]
    link._links = None  # the next test starts with fresh links (its HOME differs)


# -- a real EC2 API (moto in server mode): one per test session ---------------------------------


@pytest.fixture(scope="session")
def moto_server():
    """The endpoint URL of a moto server that the test session shares; tests point boto3 (and the CLI) at it with AWS_ENDPOINT_URL."""
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:  # a free port, so parallel sessions do not collide
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


# -- torch-free runs for plumbing tests (tests/scriptrun.py) ------------------------------------


@pytest.fixture
def script_runs(gaudi_home, tmp_path, monkeypatch):
    """Real runs whose training is a plain loop (tests/scriptrun.py): `script_runs.train(max_steps=...)`."""
    import scriptrun

    monkeypatch.setenv("GAUDI_NB_ACCELERATOR", "cpu")  # detect() would otherwise import torch to ask about CUDA
    return scriptrun.ScriptRuns(tmp_path)


def checked_outputs(nb: dict) -> list:
    """The text of each cell tagged nbval-check-output, as nbval --nbval-lax compares them with the stored ones."""
    def text_of(output: dict) -> str:
        value = output.get("text") if output.get("output_type") == "stream" else output.get("data", {}).get("text/plain", "")
        return "".join(value) if isinstance(value, list) else value

    return [[text_of(o) for o in c.get("outputs", [])] for c in nb["cells"] if "nbval-check-output" in c.get("metadata", {}).get("tags", [])]


# -- notebook 01, executed once per session: every check of the quickstart reads this output ------


@pytest.fixture(scope="session")
def quickstart(tmp_path_factory):
    """notebooks/01_quickstart.ipynb as shipped (2 CPU ranks, 30 steps, no price), executed once by papermill
    with the panel live, as in JupyterLab: %gaudi_train returns at once and the cells after it run while the
    ranks train. The executed notebook's path; test_notebooks and test_jupyterlab read its outputs."""
    import papermill as pm

    out = tmp_path_factory.mktemp("quickstart") / "01_quickstart.ipynb"
    notebooks = REPO / "notebooks"
    values = {"GAUDI_NB_HOME": str(tmp_path_factory.mktemp("quickstart_home")), "GAUDI_NB_PANEL": "live", "GAUDI_NB_STORE_URL": None}
    saved = {name: os.environ.get(name) for name in values}
    for name, value in values.items():  # the kernel papermill starts inherits them
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    try:
        pm.execute_notebook(str(notebooks / "01_quickstart.ipynb"), str(out), progress_bar=False, kernel_name="python3", cwd=str(notebooks))
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return out


# -- a real Slurm cluster on this machine (tests/slurm_cluster.py): munge, slurmctld, two slurmd ----------------


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """Debian's slurmctld and two slurmd (n1, n2; GRES gpu:hl225:4 each; partition gaudi), started once per
    session; SLURM_CONF names its config for the tests that use it. Skipped only where Slurm is not installed."""
    import slurm_cluster as slurm

    why = slurm.missing()
    if why:
        if os.environ.get("CI"):
            raise RuntimeError(f"Slurm cannot run in CI: {why}; scripts/setup-and-test installs it")
        pytest.skip(why)
    folder = Path(f"/tmp/gaudi-nb-slurm-{os.getpid()}")  # short: munge's socket path has a length limit
    folder.mkdir(mode=0o755, exist_ok=True)
    cluster = slurm.SlurmCluster(folder).start()
    yield cluster
    cluster.stop()
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


# -- the suite on two processes (pytest-xdist: `-n 2 --dist loadgroup`, in scripts/setup-and-test) ----------
# Many tests mostly wait (on ranks, agents, sshd, a browser), so two workers finish sooner even on 2 cores.
# Tests that share something run in one worker, one after the other: a module's own fixtures (a JupyterLab, a
# live dashboard, a browser, a tracker server), the session's expensive runs (notebook 01, the node install, the
# two hosts) and the one PostgreSQL test database, which the store tests empty and fill. The others go to
# whichever worker is free. A group is the set of tests linked through any of these, named after its first key.
SHARED_SESSION_FIXTURES = {"quickstart": "quickstart", "node_install": "node_install", "two_hosts": "two_hosts", "store_url": "postgresql", "slurm_cluster": "slurm"}


def _shared_keys(item: pytest.Item) -> set:
    keys = {key for name, key in SHARED_SESSION_FIXTURES.items() if name in item.fixturenames}
    if item.get_closest_marker("postgres") is not None:
        keys.add("postgresql")
    definitions = getattr(item, "_fixtureinfo", None)
    for name in item.fixturenames:
        defs = definitions.name2fixturedefs.get(name) if definitions is not None else None
        if defs and defs[-1].scope in ("module", "class", "package"):
            keys.add(f"{item.path.stem}.{name}")
    return keys


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the group into the test's id
def pytest_collection_modifyitems(config, items):
    # an xdist worker runs with dist "no" and `loadgroup` set (xdist's remote.setup_config); the controller
    # collects nothing, so the workers are where the groups are made
    if not getattr(config.option, "loadgroup", False) and getattr(config.option, "dist", "no") != "loadgroup":
        return
    parent: dict = {}

    def root(key: str) -> str:
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    keys_of = [sorted(_shared_keys(item)) for item in items]
    for keys in keys_of:
        for key in keys[1:]:
            a, b = root(keys[0]), root(key)
            if a != b:
                parent[max(a, b)] = min(a, b)
    for item, keys in zip(items, keys_of, strict=True):
        if keys:
            group = root(keys[0])
            item.add_marker(pytest.mark.xdist_group(group))
            # the scheduler groups by the id's `@group` tail, which xdist 3.8 writes into `_nodeid`: pytest 9 reads
            # the id from `_id`, so the tail never reached the scheduler (CI: the PostgreSQL tests on both workers)
            if not item.nodeid.endswith(f"@{group}"):
                try:
                    from _pytest.nodeid import coerce_node_id  # pytest >= 9
                except ImportError:
                    item._nodeid = f"{item.nodeid}@{group}"
                else:
                    item._id = coerce_node_id(f"{item.nodeid}@{group}")
    # the groups first (the longest units of work), the single tests after them to fill the gaps: a group
    # handed out last would leave the other worker idle at the end; the order within each part is kept
    grouped = {id(item) for item, keys in zip(items, keys_of, strict=True) if keys}
    items.sort(key=lambda item: id(item) not in grouped)


