"""gaudi-nb export writes a folder serving engines accept: transformers' own architecture names (vLLM and
TGI resolve a model by `architectures` and reject optimum-habana's Gaudi* names) and no gaudi_config.json.
A checkpoint GaudiTrainer saved on a Gaudi card is written here as it would be (no card to train on)."""
import json

import pytest

from gaudi_nb.export import export_run
from gaudi_nb.rundir import RunFolder, mark_checkpoint_complete


def resolve_like_a_serving_engine(folder):
    """vLLM's model registry: the first name in `architectures` it knows is the model class. Here the table is
    transformers' own classes (the names vLLM's table mirrors); a name it lacks is rejected, as vLLM does."""
    import transformers

    config = json.loads((folder / "config.json").read_text())
    for name in config["architectures"]:
        model_class = getattr(transformers, name, None)
        if model_class is not None:
            assert model_class.config_class.model_type == config["model_type"]
            return model_class
    raise ValueError(f"Model architectures {config['architectures']} are not supported")


def hpu_checkpoint(run_dir, architecture="GaudiLlamaForCausalLM", model_type="llama"):
    checkpoint = RunFolder(run_dir).checkpoints / "checkpoint-3"
    checkpoint.mkdir(parents=True)
    (checkpoint / "config.json").write_text(json.dumps({"architectures": [architecture], "model_type": model_type, "hidden_size": 64}))
    (checkpoint / "gaudi_config.json").write_text(json.dumps({"use_fused_adam": True, "use_fused_clip_norm": True}))
    (checkpoint / "model.safetensors").write_bytes(b"weights")
    (checkpoint / "optimizer.pt").write_bytes(b"state")
    mark_checkpoint_complete(checkpoint, 3)
    return checkpoint


@pytest.mark.parametrize("architecture, model_type, upstream", [
    ("GaudiLlamaForCausalLM", "llama", "LlamaForCausalLM"), ("GaudiGPT2LMHeadModel", "gpt2", "GPT2LMHeadModel"),
    ("LlamaForCausalLM", "llama", "LlamaForCausalLM"),  # a transformers Trainer's checkpoint is left as it is
])
def test_export_of_a_gaudi_trainer_checkpoint_names_transformers_own_class(tmp_path, architecture, model_type, upstream):
    hpu_checkpoint(tmp_path, architecture, model_type)
    # before: what vLLM says of GaudiTrainer's folder (the reason for the rewrite)
    if architecture != upstream:
        with pytest.raises(ValueError, match="not supported"):
            resolve_like_a_serving_engine(RunFolder(tmp_path).checkpoints / "checkpoint-3")
    written = export_run({"run_id": "r1", "run_dir": str(tmp_path)}, tmp_path / "served")
    folder = tmp_path / "served"
    assert written["architectures"] == [upstream]
    assert resolve_like_a_serving_engine(folder).__name__ == upstream
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]  # no gaudi_config.json, no optimizer
    assert json.loads((folder / "config.json").read_text())["hidden_size"] == 64  # the rest of the config unchanged
