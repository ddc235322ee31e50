"""The same store tests on SQLite and on a real PostgreSQL server, schema migrations included."""
import getpass
import json
import math
import subprocess
import sys
import time

import pytest
import sqlalchemy
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from gaudi_nb import migrations
from gaudi_nb.errors import GaudiNbError
from gaudi_nb.events import make_event
from gaudi_nb.jsontext import dumps_for_store
from gaudi_nb.store import Base, RunRow, RunStore, _engines
from gaudi_nb.summary import empty_summary, fold, public


def _events(run_id):
    spec = {"max_steps": 3, "nodes": 1, "budget_usd": 1.0}
    return [
        make_event("run_start", run_id, spec=spec, price_per_hour=36.0, price_source="explicit", accelerator="cpu"),
        make_event("worker_start", run_id, rank=0, trainer="transformers", precision="fp32", accelerator="cpu", world_size=2),
        make_event("step", run_id, rank=0, step=1, loss=7.0, tokens=1000, samples=8, step_time_s=1.0, warmup=True),
        make_event("step", run_id, rank=0, step=2, loss=6.0, tokens=1000, samples=8, step_time_s=0.5, warmup=False),
        make_event("telemetry", run_id, source="host", devices=[]),
        make_event("cost", run_id, usd=0.02, elapsed_s=2.0, price_per_hour=36.0, nodes=1),
        make_event("step", run_id, rank=0, step=3, loss=float("nan"), tokens=1000, samples=8, step_time_s=0.5, warmup=False),
        make_event("run_end", run_id, status="succeeded", exit_code=0),
    ]


def test_ingest_folds_events_into_the_run_record(store_url):
    store = RunStore(store_url)
    store.register("r1", spec={"max_steps": 3}, target="local", run_dir="/tmp/r1")
    events = _events("r1")
    assert store.ingest("r1", events, 0, 800) == len(events)
    record = store.get("r1")
    assert record["status"] == "succeeded"
    assert record["steps_completed"] == 3
    assert record["metrics"]["first_loss"] == 7.0
    assert record["metrics"]["tokens_per_second"] == 2000.0  # warmup step left out
    assert record["cost"]["usd"] == 0.02 and record["cost"]["price_per_hour"] == 36.0
    assert math.isclose(record["cost"]["usd_per_million_tokens"], 36.0 / 3600 / 2000 * 1e6)
    assert record["telemetry_samples"] == 1 and record["trainer"] == "transformers"


def test_ingesting_the_same_bytes_twice_adds_nothing(store_url):
    store = RunStore(store_url)
    store.register("r2", spec={}, target="local", run_dir=None)
    events = _events("r2")
    assert store.ingest("r2", events[:4], 0, 400) == 4
    assert store.ingest("r2", events[:4], 0, 400) == 0  # a reader that saw the same bytes
    assert store.ingest("r2", events[4:], 400, 800) == 4
    assert store.count_events("r2") == len(events)
    assert [e["type"] for e in store.events("r2")] == [e["type"] for e in events]
    assert store.offset("r2") == 800


def test_nan_loss_is_stored_as_null_not_lost(store_url):
    store = RunStore(store_url)
    store.register("r3", spec={}, target="local", run_dir=None)
    store.ingest("r3", _events("r3"), 0, 800)
    steps = store.events("r3", types=["step"])
    assert [e["step"] for e in steps] == [1, 2, 3] and steps[-1]["loss"] is None


def test_one_tick_ingests_many_runs_and_skips_bytes_another_reader_took(store_url):
    store = RunStore(store_url)
    for run_id in ("m1", "m2", "m3"):
        store.register(run_id, spec={}, target="local", run_dir=None)
    store.ingest("m2", _events("m2")[:2], 0, 200)  # another reader took m2's first bytes already
    added = store.ingest_many([("m1", _events("m1"), 0, 800), ("m2", _events("m2")[:2], 0, 200), ("m3", _events("m3")[:4], 0, 400)])
    assert added == {"m1": 8, "m2": 0, "m3": 4}
    assert store.get("m1")["status"] == "succeeded" and store.get("m3")["steps_completed"] == 2
    assert [r["run_id"] for r in store.list(status="succeeded")] == ["m1"]  # the runs' own columns move with the summary
    with store.engine.connect() as connection:
        row = connection.execute(sqlalchemy.select(RunRow).where(RunRow.run_id == "m1")).one()
    assert (row.status, row.steps_completed, row.cost_usd, row.events_count, row.events_offset) == ("succeeded", 3, 0.02, 8, 800) and row.ended_at is not None
    assert store.count_events("m2") == 2 and store.offset("m2") == 200
    with pytest.raises(GaudiNbError, match="no run 'nope'"):
        store.ingest_many([("m3", _events("m3")[4:], 400, 800), ("nope", _events("nope"), 0, 800)])
    assert store.offset("m3") == 400 and store.count_events("m3") == 4  # nothing of that tick was written


def test_events_read_from_a_stream_are_stored_as_written(store_url, tmp_path):
    """The store keeps a read line as the payload; a line with a NaN is stored with null in its place."""
    from gaudi_nb.events import EventWriter, read_events

    store = RunStore(store_url)
    store.register("w1", spec={}, target="local", run_dir=None)
    writer = EventWriter(tmp_path / "events.jsonl", "w1")
    for e in _events("w1"):
        writer.write(e)
    writer.write(make_event("log", "w1", message="loss is NaN here"))  # the word, not the number: kept
    writer.close()
    events, end = read_events(tmp_path / "events.jsonl", 0)
    assert store.ingest("w1", events, 0, end) == 9
    stored = store.events("w1")
    assert [e["type"] for e in stored] == [e["type"] for e in events]
    assert stored[6]["loss"] is None and stored[3]["loss"] == 6.0 and stored[-1]["message"] == "loss is NaN here"
    assert store.get("w1")["metrics"]["first_loss"] == 7.0


@pytest.mark.breaks_event_contract
def test_a_bad_line_and_a_step_above_2_to_the_31_are_stored_and_the_tick_goes_on(store_url, tmp_path):
    """One transaction for two runs: a line that is not UTF-8 is kept aside on its run, a step past int4
    (PostgreSQL's INTEGER failed the whole tick) is stored, and the other run's events go in with them."""
    from gaudi_nb.events import EventWriter, read_events

    store = RunStore(store_url)
    paths = {}
    for run_id in ("big", "calm"):
        store.register(run_id, spec={}, target="local", run_dir=None)
        paths[run_id] = tmp_path / run_id / "events.jsonl"
        writer = EventWriter(paths[run_id], run_id, rank=0)
        writer.emit("step", step=2**31 + 5 if run_id == "big" else 1, loss=1.0)
        writer.close()
    with open(paths["big"], "ab") as fh:
        fh.write(b"\xc3\x28 broken\n")
    batches = []
    for run_id, path in paths.items():
        events, end = read_events(path)
        batches.append((run_id, events, 0, end))
    assert store.ingest_many(batches) == {"big": 2, "calm": 1}
    big, calm = store.get("big"), store.get("calm")
    assert big["steps_completed"] == 2**31 + 5 and calm["steps_completed"] == 1
    assert big["bad_lines"]["count"] == 1 and "utf-8" in big["bad_lines"]["first"]["error"] and calm["bad_lines"] is None
    assert [e["type"] for e in store.events("big")] == ["step", "bad_line"] and store.events("big")[0]["step"] == 2**31 + 5


def test_a_summary_another_process_moved_is_read_again(store_url):
    """The store keeps the summaries it wrote; a run another process ingested into meanwhile is folded from the database."""
    store = RunStore(store_url)
    store.register("c1", spec={}, target="local", run_dir=None)
    events = _events("c1")
    store.ingest("c1", events[:3], 0, 300)  # steps 1
    other = "from gaudi_nb.events import make_event; from gaudi_nb.store import RunStore; import sys; " \
            "RunStore(sys.argv[1]).ingest('c1', [make_event('step', 'c1', rank=0, step=2, loss=6.0, tokens=1000, samples=8, step_time_s=0.5)], 300, 400)"
    subprocess.run([sys.executable, "-c", other, store_url], check=True, timeout=120)
    store.ingest("c1", [make_event("step", "c1", rank=0, step=3, loss=5.0, tokens=1000, samples=8, step_time_s=0.5)], 400, 500)
    record = store.get("c1")
    assert record["steps_completed"] == 3 and record["metrics"]["tokens_seen"] == 3000


def test_a_run_registered_again_under_its_id_is_folded_from_the_database(store_url):
    """A store made anew at the same URL (the tests' PostgreSQL is): the same run id at the same count and
    offset is another run, and what this process remembers of the first must not be used."""
    store = RunStore(store_url)
    store.register("c2", spec={}, target="local", run_dir=None)
    store.ingest("c2", [make_event("step", "c2", rank=0, step=1, loss=9.0, tokens=1000, samples=8, step_time_s=0.5)], 0, 100)
    with store.engine.begin() as connection:
        connection.execute(sqlalchemy.text("DELETE FROM events WHERE run_id = 'c2'"))
        connection.execute(sqlalchemy.text("DELETE FROM runs WHERE run_id = 'c2'"))
    store.register("c2", spec={}, target="local", run_dir=None)
    other = "from gaudi_nb.events import make_event; from gaudi_nb.store import RunStore; import sys; " \
            "RunStore(sys.argv[1]).ingest('c2', [make_event('step', 'c2', rank=0, step=1, loss=5.0, tokens=7, samples=8, step_time_s=0.5)], 0, 100)"
    subprocess.run([sys.executable, "-c", other, store_url], check=True, timeout=120)
    store.ingest("c2", [make_event("step", "c2", rank=0, step=2, loss=4.0, tokens=7, samples=8, step_time_s=0.5)], 100, 200)
    record = store.get("c2")
    assert record["metrics"]["tokens_seen"] == 14 and record["metrics"]["first_loss"] == 5.0


def test_list_and_prefix_lookup(store_url):
    store = RunStore(store_url)
    store.register("alpha-1", spec={}, target="local", run_dir=None)
    store.register("beta-1", spec={}, target="local", run_dir=None, kind="batch")
    assert {r["run_id"] for r in store.list()} == {"alpha-1", "beta-1"}
    assert [r["run_id"] for r in store.list(kind="batch")] == ["beta-1"]
    assert store.resolve("alp") == "alpha-1"


# -- schema migrations ---------------------------------------------------------

# The tables exactly as gaudi_nb's create_all made them before it had migrations (revision 0001).
_OLD = sqlalchemy.MetaData()
_OLD_RUNS = sqlalchemy.Table(
    "runs",
    _OLD,
    sqlalchemy.Column("run_id", sqlalchemy.String(128), primary_key=True),
    sqlalchemy.Column("name", sqlalchemy.String(256)),
    sqlalchemy.Column("kind", sqlalchemy.String(32), nullable=False),
    sqlalchemy.Column("status", sqlalchemy.String(32), nullable=False, index=True),
    sqlalchemy.Column("target", sqlalchemy.String(256), nullable=False),
    sqlalchemy.Column("run_dir", sqlalchemy.String(1024)),
    sqlalchemy.Column("created_at", sqlalchemy.Float, nullable=False, index=True),
    sqlalchemy.Column("ended_at", sqlalchemy.Float),
    sqlalchemy.Column("steps_completed", sqlalchemy.Integer, nullable=False),
    sqlalchemy.Column("cost_usd", sqlalchemy.Float),
    sqlalchemy.Column("events_offset", sqlalchemy.BigInteger, nullable=False),
    sqlalchemy.Column("events_count", sqlalchemy.Integer, nullable=False),
    sqlalchemy.Column("summary", sqlalchemy.JSON, nullable=False),
)
_OLD_EVENTS = sqlalchemy.Table(
    "events",
    _OLD,
    sqlalchemy.Column("id", sqlalchemy.Integer, primary_key=True, autoincrement=True),
    sqlalchemy.Column("run_id", sqlalchemy.String(128), nullable=False, index=True),
    sqlalchemy.Column("seq", sqlalchemy.Integer, nullable=False),
    sqlalchemy.Column("type", sqlalchemy.String(32), nullable=False, index=True),
    sqlalchemy.Column("t", sqlalchemy.Float, nullable=False),
    sqlalchemy.Column("rank", sqlalchemy.Integer),
    sqlalchemy.Column("step", sqlalchemy.Integer),
    sqlalchemy.Column("payload", sqlalchemy.JSON, nullable=False),
    sqlalchemy.UniqueConstraint("run_id", "seq", name="uq_events_run_seq"),
)


def _finite(value):
    """A value as the store writes it (NaN and infinities as null)."""
    return json.loads(dumps_for_store(value))


def _old_store_with_a_run(url, run_id):
    """A store as the previous gaudi_nb left it: its create_all, one finished run and its events; returns the run's record."""
    events = [_finite(e) for e in _events(run_id)]
    summary = fold(dict(empty_summary(run_id), spec={"max_steps": 3}, target="local", run_dir="/tmp/old", kind="train"), events)
    engine = sqlalchemy.create_engine(url)
    _OLD.create_all(engine)
    with engine.begin() as connection:
        connection.execute(
            _OLD_RUNS.insert().values(
                run_id=run_id, name=None, kind="train", status=summary["status"], target="local", run_dir="/tmp/old", created_at=1700000000.0,
                ended_at=summary["ended_at"], steps_completed=summary["steps_completed"], cost_usd=summary["cost"]["usd"],
                events_offset=800, events_count=len(events), summary=_finite(summary),
            )
        )
        connection.execute(
            _OLD_EVENTS.insert(),
            [dict(run_id=run_id, seq=i, type=e["type"], t=e["t"], rank=e.get("rank"), step=e.get("step"), payload=e) for i, e in enumerate(events)],
        )
    engine.dispose()
    return public(dict(_finite(summary), kind="train", created_at=1700000000.0))


def _version(url):
    engine = sqlalchemy.create_engine(url)
    with engine.connect() as connection:
        versions = list(connection.execute(sqlalchemy.text("SELECT version_num FROM alembic_version")).scalars())
    engine.dispose()
    return versions


def test_a_store_made_before_migrations_keeps_its_runs_and_gains_owner(store_url):
    before = _old_store_with_a_run(store_url, "old-1")
    store = RunStore(store_url)
    record = store.get("old-1")
    assert record.pop("owner") is None  # nobody recorded who started it
    assert record == before  # status, metrics, cost: all as they were
    assert record["status"] == "succeeded" and record["metrics"]["first_loss"] == 7.0
    assert [e["type"] for e in store.events("old-1")] == [e["type"] for e in _events("old-1")]
    assert store.offset("old-1") == 800
    # the old run still takes new events after its offset, and new runs get an owner
    assert store.ingest("old-1", [make_event("telemetry", "old-1", source="host", devices=[])], 800, 900) == 1
    assert store.count_events("old-1") == len(_events("old-1")) + 1
    store.register("new-1", spec={}, target="local", run_dir=None)
    assert {r["run_id"]: r["owner"] for r in store.list()} == {"old-1": None, "new-1": _who(store_url)}
    assert _version(store_url) == [migrations.HEAD]


def _who(store_url):
    """Who a store says started a run: PostgreSQL's current_user (the URL's role), the login name on SQLite."""
    return sqlalchemy.engine.make_url(store_url).username if store_url.startswith("postgresql") else getpass.getuser()


def test_register_records_who_started_the_run(store_url, monkeypatch):
    monkeypatch.setenv("USER", "mallory")  # PostgreSQL's current_user, not $USER, on a shared store
    monkeypatch.setenv("LOGNAME", "mallory")
    store = RunStore(store_url)
    store.register("mine", spec={}, target="local", run_dir=None)
    store.register("theirs", spec={}, target="local", run_dir=None, owner="alice")
    me = _who(store_url) if store_url.startswith("postgresql") else "mallory"
    assert store.get("mine")["owner"] == me
    assert store.get("theirs")["owner"] == "alice"
    assert {r["run_id"]: r["owner"] for r in store.list()} == {"mine": me, "theirs": "alice"}
    # each registration is an audit entry, in the same transaction
    assert [(e["action"], e["target"], e["actor"]) for e in store.audit_entries()] == [("train", "theirs", me), ("train", "mine", me)]


def test_the_migrations_build_exactly_the_schema_the_models_describe(store_url):
    RunStore(store_url)
    engine = sqlalchemy.create_engine(store_url)
    with engine.connect() as connection:
        # a model column without a revision (or the reverse) shows up here as a difference
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert differences == []
    assert ScriptDirectory.from_config(migrations.config()).get_current_head() == migrations.HEAD
    assert _version(store_url) == [migrations.HEAD]


def test_a_store_from_a_newer_gaudi_nb_is_refused_with_a_clear_message(store_url):
    RunStore(store_url).register("r", spec={}, target="local", run_dir=None)
    engine = sqlalchemy.create_engine(store_url)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text("UPDATE alembic_version SET version_num = '0999'"))
    engine.dispose()
    _engines.pop(store_url).dispose()  # as a new process would open it
    with pytest.raises(GaudiNbError, match="upgrade gaudi_nb"):
        RunStore(store_url)


_OPEN_AT_ONCE = """
import sys, time
from pathlib import Path
from gaudi_nb.store import RunStore
url, folder, name = sys.argv[1:]
Path(folder, name + ".ready").touch()
while not Path(folder, "go").exists():  # start together: the imports are done, only the open races
    time.sleep(0.001)
RunStore(url).register(name, spec={}, target="local", run_dir=None)
"""


def test_processes_opening_a_fresh_store_at_once_all_succeed(store_url, tmp_path):
    names = [f"p{i}" for i in range(4)]
    procs = [subprocess.Popen([sys.executable, "-c", _OPEN_AT_ONCE, store_url, str(tmp_path), name], stderr=subprocess.PIPE, text=True) for name in names]
    deadline = time.time() + 120
    while not all((tmp_path / f"{name}.ready").exists() for name in names):
        assert time.time() < deadline and all(p.poll() is None for p in procs), [p.communicate()[1] for p in procs if p.poll() is not None]
        time.sleep(0.01)
    (tmp_path / "go").touch()
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * len(procs), errors
    assert sorted(RunStore(store_url).run_ids()) == names
    assert _version(store_url) == [migrations.HEAD]


def test_opening_an_up_to_date_store_does_not_load_alembic(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    RunStore(url)
    # each CLI call opens the store: an up-to-date one must cost a query, not Alembic's import and script scan
    code = "import sys; from gaudi_nb.store import RunStore; RunStore(sys.argv[1]); print('alembic' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code, url], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_a_node_row_whose_home_or_python_is_not_a_path_never_reaches_a_command_line(tmp_path, monkeypatch):
    """A shared store's row is not trusted: `home` and `python` go into the node's command lines."""
    from gaudi_nb.errors import SpecError
    from gaudi_nb.targets import target_for

    monkeypatch.setenv("GAUDI_NB_HOME", str(tmp_path))
    store = RunStore(f"sqlite:///{tmp_path / 'store.db'}")
    node = {"url": "ssh://u@h:22", "user": "u", "host": "h", "port": 22}
    with pytest.raises(SpecError, match="home"):
        store.add_node({**node, "name": "a", "home": "~; touch /tmp/owned"})
    with pytest.raises(SpecError, match="python"):
        store.add_node({**node, "name": "b", "python": "python3 -c 'import os'"})
    store.add_node({**node, "name": "c", "home": "/home/u/.gaudi_nb", "python": "/usr/bin/python3"})
    with store.engine.begin() as connection:  # a teammate's client wrote the row past these checks
        connection.execute(sqlalchemy.text("UPDATE nodes SET home = '/x\n$(touch /tmp/owned)' WHERE name = 'c'"))
    assert store.list_nodes()[0]["name"] == "c"  # listed as text
    monkeypatch.setenv("GAUDI_NB_STORE_URL", store.url)
    with pytest.raises(SpecError, match="node 'c': its recorded home"):
        target_for("c").record("c")
