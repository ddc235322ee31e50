"""Notebooks 01-03 as CI runs them: papermill on CPU, and what nbval --nbval-lax checks on the cells tagged
nbval-check-output (their outputs are the ones the notebook stores), read from that one execution.

Notebook 01 is executed once per session, as shipped (conftest's `quickstart`); every check of it reads
that output. 02 and 03 run with small parameters, headless; 04 runs as a batch job (test_notebook_04)."""
from __future__ import annotations

import json
import re

import pytest
from conftest import REPO, checked_outputs

NOTEBOOKS = REPO / "notebooks"
# small parameters: CPU, a few steps (01 runs as shipped, see conftest's quickstart)
CASES = {
    "02_finetune_on_gaudi": {"devices": 1, "max_steps": 4, "eval_steps": 2, "sequence_length": 64, "instance_type": "dl1.24xlarge"},
    "03_cost_planning": {"model_parameters": 7e9, "training_tokens": 1e9},
}


def test_every_notebook_has_a_parameters_cell_and_tagged_cells():
    for name in ["01_quickstart", *CASES]:
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
        # papermill is headless: the panel left its final state, an image and a text summary
        assert images and ": succeeded, step 4/4" in text
        assert not [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    else:
        assert images and "How these estimates are made" in text
    if name == "02_finetune_on_gaudi":
        assert "$13.11/h" in text  # the instance type's catalog price metered the run
    # what nbval checks: the tagged cells show what the notebook stores (the parameters change none of them)
    assert checked_outputs(nb) == checked_outputs(json.loads((NOTEBOOKS / f"{name}.ipynb").read_text()))


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
def test_quickstart_under_run_all_in_a_live_frontend_reads_the_finished_run(quickstart):
    """Issue 7 without a browser: in JupyterLab the panel is live, so %gaudi_train returns at once and the
    cells after it run while the ranks train. They must still show the finished run, in numbers and words."""
    nb = json.loads(quickstart.read_text())
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})], "the live panel was not shown"
    text = _shown_text(nb)
    shown = [line for line in text.splitlines() if re.search(r"\bNone\b", line)]
    assert not shown, f"outputs show None where a number or a word belongs: {shown}"
    assert re.search(r": succeeded, step 30/30\b", text), text
    assert re.search(r"\bcpu × 2 \(\w+", text), text
    assert re.search(r"loss \d+\.\d{3} → \d+\.\d{3}", text), text
    assert re.search(r"throughput [\d,]+ tokens/s", text), text
    assert "cost unknown: no price per hour was given" in text  # no price as shipped: unknown, not None or $0
    # what nbval checks: the tagged cells show what the notebook stores
    assert checked_outputs(nb) == checked_outputs(json.loads((NOTEBOOKS / "01_quickstart.ipynb").read_text()))
