"""docs/: the site builds in strict mode, its generated pages match the CLI and the price catalog,
the architecture page matches the code, and nothing a user reads links outside the repository."""
from __future__ import annotations

import csv
import html
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
HOOK = ROOT / "docs" / "hooks" / "cli_reference.py"
PAGES = ["index", "quickstart", "concepts", "nodes", "kubernetes", "architecture", "reference/magics", "reference/cli", "cost", "tuning", "deployment", "troubleshooting"]


def _hook_module():
    pytest.importorskip("mkdocs", reason="mkdocs-material builds the docs (dev extra)")
    spec = importlib.util.spec_from_file_location("gaudi_nb_docs_hook", HOOK)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    pytest.importorskip("material", reason="mkdocs-material builds the docs (dev extra)")
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    return out


def _text(page: Path) -> str:
    """The visible text of a built page, whitespace collapsed."""
    raw = page.read_text()
    raw = re.sub(r"<(script|style)\b.*?</\1>", " ", raw, flags=re.DOTALL)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", raw)).split())


def _normalise(text: str) -> str:
    return " ".join(text.split())


def _cli_help(paths: List[Tuple[str, ...]], env: Dict[str, str]) -> Dict[Tuple[str, ...], str]:
    """`gaudi-nb PATH --help` for each path, through gaudi_nb.cli.main (what the console script calls), in one process."""
    script = (
        "import sys\n"
        "from gaudi_nb.cli import main\n"
        "for line in sys.stdin.read().splitlines():\n"
        "    args = line.split()\n"
        "    print('@@@ ' + ' '.join(args), flush=True)\n"
        "    try:\n"
        "        main(args + ['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "    sys.stdout.flush()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        input="\n".join(" ".join(p) or "" for p in paths) + "\n",
        capture_output=True,
        text=True,
        env={**__import__("os").environ, **env},
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    chunks = result.stdout.split("@@@ ")[1:]
    out = {}
    for chunk in chunks:
        head, _, body = chunk.partition("\n")
        out[tuple(head.split())] = body
    return out


def test_site_builds_strictly_with_every_page(site):
    for page in PAGES:
        assert (site / page / "index.html").exists() or (page == "index" and (site / "index.html").exists()), page


def test_cli_reference_matches_gaudi_nb_help(site):
    hook = _hook_module()
    app, root = hook._root_command()
    paths = [path for path, _ in hook._walk(root)]
    assert () in paths and ("train",) in paths and ("k8s", "render") in paths
    helps = _cli_help(paths, hook.HELP_ENV)
    page = _text(site / "reference" / "cli" / "index.html")
    for path in paths:
        expected = _normalise(helps[path])
        assert expected, f"gaudi-nb {' '.join(path)} --help printed nothing"
        assert expected in page, f"the CLI reference differs from `gaudi-nb {' '.join(path)} --help`"
        assert f"gaudi-nb {' '.join(path)}".strip() in page


def test_cost_page_lists_every_catalog_row_with_its_source(site):
    page = _text(site / "cost" / "index.html")
    with (ROOT / "gaudi_nb" / "cost" / "catalog.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows
    for row in rows:
        assert row["instance_type"] in page
        assert row["as_of"] in page
        if row["on_demand_per_hour"].strip():
            assert f"${float(row['on_demand_per_hour']):,.2f}" in page
    assert "unknown" in page
    assert "6 × parameters × tokens" in page


def test_quickstart_is_the_readme_commands_then_the_first_notebook(site):
    page = _text(site / "quickstart" / "index.html")
    train, test, notebook = (page.index(s) for s in ("./scripts/setup-and-train", "./scripts/setup-and-test", "notebooks/01_quickstart.ipynb"))
    assert train < test < notebook


def test_magics_reference_names_every_magic(site):
    page = _text(site / "reference" / "magics" / "index.html")
    for magic in ("%load_ext gaudi_nb", "%gaudi_attach", "%gaudi_train", "%%gaudi_train", "--script", "%gaudi_runs",
                  "%gaudi_watch", "%gaudi_stop", "%gaudi_cost", "GaudiMagics.budget_usd"):
        assert magic in page, magic


def test_nodes_page_covers_attaching_and_training_there(site):
    page = _text(site / "nodes" / "index.html")
    for text in ("gaudi-nb nodes attach", "gaudi-nb nodes list", "gaudi-nb nodes check", "gaudi-nb nodes detach", "--target gaudi1",
                 "%gaudi_attach ssh://", "--trust-new-host", "--python", "unreachable", "lost", "How long attaching takes", "notebooks/05_remote_node.ipynb"):
        assert text in page, text
    assert 'href="nodes/"' in (site / "index.html").read_text()  # linked from the home page


def test_troubleshooting_covers_the_known_pains(site):
    page = _text(site / "troubleshooting" / "index.html").lower()
    for pain in ("kernel died", "memory looks full", "first steps are slow", "%gaudi_watch", "pre-allocates", "warmup_steps"):
        assert pain in page, pain


def test_hook_stops_the_build_with_a_clear_error_when_the_cli_does_not_import(monkeypatch):
    hook = _hook_module()
    from mkdocs.exceptions import PluginError

    monkeypatch.setitem(sys.modules, "gaudi_nb.cli", None)  # importing it now raises ImportError
    with pytest.raises(PluginError, match=r"cannot import the CLI \(gaudi_nb.cli.app\)"):
        hook.on_page_markdown("# CLI\n\n<!-- gaudi-nb:cli-reference -->\n", page=None, config=None, files=None)


# -- what a reader of the repository can follow ---------------------------------------------------
def _reader_files() -> List[Path]:
    """README.md and every text file under docs/ (pages, hooks, styles)."""
    docs = [p for p in sorted((ROOT / "docs").rglob("*")) if p.is_file() and "__pycache__" not in p.parts]
    return [ROOT / "README.md", *docs]


OUTSIDE = re.compile(r"\.\./shared|/work/shared|\bshared/(DESIGN|TESTING)\.md")


def test_readme_and_docs_never_send_the_reader_into_shared():
    """../shared/ is the team's workspace, not part of the project: a user who clones the repo does not have it."""
    offenders = []
    for path in _reader_files():
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "links into ../shared, which users do not have:\n" + "\n".join(offenders)


def test_readme_links_lead_to_files_in_the_repository():
    text = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert "docs/architecture.md" in links, "README's 'How it works' links the architecture page"
    for link in links:
        if re.match(r"[a-z]+://|#|mailto:", link):
            continue
        target = (ROOT / link.split("#")[0]).resolve()
        assert target.is_relative_to(ROOT), f"README links outside the repository: {link}"
        assert target.exists(), f"README links a missing file: {link}"


def _architecture() -> str:
    return (ROOT / "docs" / "architecture.md").read_text()


def test_architecture_page_names_every_event_type_and_run_state():
    from gaudi_nb import events

    page = _architecture()
    assert "(events.md)" in page  # the event types are described there, generated from the contract (tests/test_events.py)
    states = {"pending", "starting", "running", "stopping", *getattr(events, "ACTIVE_STATUSES", ()), *events.TERMINAL_STATUSES, "lost"}
    line = "pending → starting → running → succeeded | failed | stopped | budget_exceeded | lost"
    assert line in page
    for state in sorted(states):
        assert f"| `{state}` |" in page, f"run state {state} has no row in the states table"


def test_architecture_page_has_a_room_for_every_part_of_the_package():
    page = _architecture()
    rooms = page[page.index("## Rooms"):page.index("## Fixed points")]
    parts = sorted(p.name + ("/" if p.is_dir() else "") for p in (ROOT / "gaudi_nb").iterdir() if p.name != "__pycache__" and (p.suffix == ".py" or p.is_dir()))
    assert "api.py" in parts and "notebook/" in parts
    missing = [p for p in parts if f"`gaudi_nb/{p}`" not in rooms and f"`{p}`" not in rooms]
    assert not missing, f"parts of gaudi_nb/ without a row in docs/architecture.md's rooms table: {missing}"
