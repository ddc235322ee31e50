"""Notebooks 01-03 as CI runs them: papermill with small parameters on CPU, then nbval on the cells tagged nbval-check-output."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from conftest import REPO

NOTEBOOKS = REPO / "notebooks"
# small parameters: CPU, a few steps
CASES = {
    "01_quickstart": {"devices": 1, "max_steps": 4, "price_per_hour": 3.6, "budget_usd": 1.0},
    "02_finetune_on_gaudi": {"devices": 1, "max_steps": 4, "eval_steps": 2, "instance_type": "dl1.24xlarge"},
    "03_cost_planning": {"model_parameters": 7e9, "training_tokens": 1e9},
}


def test_every_notebook_has_a_parameters_cell_and_tagged_cells():
    for name in CASES:
        nb = json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        tags = [set(c.get("metadata", {}).get("tags", [])) for c in code]
        assert "parameters" in tags[0], name
        assert any("nbval-check-output" in t for t in tags), name
        # stored outputs only where nbval compares them
        for cell, t in zip(code, tags, strict=True):
            assert not cell["outputs"] or "nbval-check-output" in t, (name, cell["source"])
            assert t & {"parameters", "nbval-check-output", "nbval-ignore-output"}, (name, cell["source"])


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_notebook_runs_under_papermill(name, gaudi_home, tmp_path, monkeypatch):
    import papermill as pm

    monkeypatch.delenv("GAUDI_NB_PANEL", raising=False)  # papermill's own headless detection
    out = tmp_path / f"{name}.ipynb"
    pm.execute_notebook(str(NOTEBOOKS / f"{name}.ipynb"), str(out), parameters=CASES[name], progress_bar=False, kernel_name="python3", cwd=str(NOTEBOOKS))
    nb = json.loads(out.read_text())
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    text = "".join("".join(o["text"]) if isinstance(o.get("text"), list) else o.get("text", "") for o in outputs)
    if name != "03_cost_planning":
        # the headless panel left its final state: an image and a text summary
        assert images and ": succeeded, step 4/4" in text
        assert not [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    else:
        assert images and "How these estimates are made" in text
    if name == "02_finetune_on_gaudi":
        assert "$13.11/h" in text  # the instance type's catalog price metered the run


@pytest.mark.slow
def test_nbval_passes_on_the_tagged_cells(gaudi_home):
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "-p", "no:cacheprovider", "-q", "--rootdir", str(NOTEBOOKS), *[str(NOTEBOOKS / f"{n}.ipynb") for n in [*CASES, "04_batch_sweep"]]],
        capture_output=True, text=True, timeout=900, cwd=str(NOTEBOOKS), env={**os.environ, "GAUDI_NB_HOME": str(gaudi_home)},
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout


def _shown_text(nb: dict) -> str:
    """What a person reads under the cells: printed text and results (a widget's placeholder repr left out)."""
    parts = []
    for cell in nb["cells"]:
        for o in cell.get("outputs", []):
            if o.get("output_type") == "stream":
                parts.append("".join(o["text"]) if isinstance(o["text"], list) else o["text"])
            elif "application/vnd.jupyter.widget-view+json" not in o.get("data", {}):
                plain = o.get("data", {}).get("text/plain", "")
                parts.append("".join(plain) if isinstance(plain, list) else plain)
    return "\n".join(parts)


@pytest.mark.slow
def test_quickstart_under_run_all_in_a_live_frontend_reads_the_finished_run(gaudi_home, tmp_path, monkeypatch):
    """Issue 7 without a browser: in JupyterLab the panel is live, so %gaudi_train returns at once and the
    cells after it run while the ranks train. They must still show the finished run, in numbers and words."""
    import papermill as pm

    monkeypatch.setenv("GAUDI_NB_PANEL", "live")  # what JupyterLab gets: the magic shows the panel and does not wait
    out = tmp_path / "01_quickstart.ipynb"
    # no price, as shipped: the cost is unknown and must say so in words
    pm.execute_notebook(str(NOTEBOOKS / "01_quickstart.ipynb"), str(out), parameters={"devices": 1, "max_steps": 4}, progress_bar=False, kernel_name="python3", cwd=str(NOTEBOOKS))
    nb = json.loads(out.read_text())
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})], "the live panel was not shown"
    text = _shown_text(nb)
    shown = [line for line in text.splitlines() if re.search(r"\bNone\b", line)]
    assert not shown, f"outputs show None where a number or a word belongs: {shown}"
    assert re.search(r": succeeded, step 4/4\b", text), text
    assert re.search(r"loss \d+\.\d{3} → \d+\.\d{3}", text), text
    assert "cost unknown: no price per hour was given" in text
    assert "{'status': 'succeeded', 'all steps done': True" in text
