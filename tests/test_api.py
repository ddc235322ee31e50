"""The client's side of a run before anything starts: paths, checks, spec files (no processes)."""
import pytest

from gaudi_nb import api
from gaudi_nb.errors import SpecError


def test_relative_paths_are_made_absolute_from_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "data.txt").write_text("hello world\n" * 50)
    (tmp_path / "train.py").write_text("print('hi')\n")
    monkeypatch.chdir(tmp_path)
    spec = api.build_spec(dataset="./data.txt", script="train.py", model="tiny-llama")
    assert spec.dataset == str(tmp_path / "data.txt")
    assert spec.script == str(tmp_path / "train.py")
    assert spec.model == "tiny-llama"  # a preset name is not a path
    api.check(spec)


def test_several_dataset_files_and_hub_ids_keep_their_kind(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = api.build_spec(dataset="a.jsonl, sub/b.txt")
    assert spec.dataset == f"{tmp_path / 'a.jsonl'},{tmp_path / 'sub' / 'b.txt'}"
    assert api.build_spec(dataset="roneneldan/TinyStories").dataset == "roneneldan/TinyStories"


def test_a_missing_relative_file_is_one_line_naming_the_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError) as info:
        api.check(api.build_spec(dataset="./missing.txt"))
    assert f"dataset: file not found: {tmp_path / 'missing.txt'}" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(SpecError, match="script: file not found"):
        api.check(api.build_spec(script="gone.py"))


def test_spec_file_paths_are_relative_to_the_file(tmp_path, monkeypatch):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "corpus.txt").write_text("text\n")
    (folder / "run.yaml").write_text("dataset: corpus.txt\ndevices: 2\n")
    monkeypatch.chdir(tmp_path)
    options = api.load_spec_file("project/run.yaml")
    assert options == {"dataset": str(folder / "corpus.txt"), "devices": 2}
    with pytest.raises(SpecError, match="spec file .*nothing.yaml"):
        api.load_spec_file("nothing.yaml")
    (folder / "bad.yaml").write_text("- a list\n")
    with pytest.raises(SpecError, match="must hold a mapping"):
        api.load_spec_file(folder / "bad.yaml")


def test_several_nodes_on_the_local_target_is_refused_before_anything_starts(gaudi_home):
    with pytest.raises(SpecError) as info:
        api.train(nodes=2, devices=1)
    assert "nodes: the target local has 1 node(s); --nodes 2 needs as many attached nodes: --target NAME1,NAME2" in str(info.value)
    assert not (gaudi_home / "runs").exists() or not any((gaudi_home / "runs").iterdir())


def test_preset_parameter_counts_match_the_built_models():
    from gaudi_nb.presets import LOCAL_VOCAB_SIZE, model_presets
    from gaudi_nb.worker.models import build_local_model

    for name in ("tiny-llama", "tiny-gpt2"):
        preset = model_presets.get(name)
        built = build_local_model(preset, LOCAL_VOCAB_SIZE, 128)
        assert preset.parameter_count(LOCAL_VOCAB_SIZE, 128) == sum(p.numel() for p in built.parameters()), name


def test_the_client_never_imports_torch_to_check_or_count(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys, gaudi_nb.api as api; api.check(api.build_spec(model='tiny-llama')); "
        "api.estimate_cost(1e9, model='tiny-llama'); "
        "import gaudi_nb.notebook.form; "
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"GAUDI_NB_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert out.stdout.split() == ["False", "False"], out.stderr[-2000:]
