"""LoRA: a real run on tiny-llama trains a small adapter and its loss falls; `gaudi-nb export` merges it into a folder transformers loads;
`gaudi-nb resume` goes on from the adapter."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import BIN

from gaudi_nb import api
from gaudi_nb.export import export_run

GAUDI_NB = str(BIN / "gaudi-nb")


def gaudi_nb(*args, timeout=240):
    return subprocess.run([GAUDI_NB, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args, says", [
    (["--lora", "--script", "train.py"], "--script run builds its own model"),
    (["--lora-rank", "4"], "--lora-rank applies to LoRA runs: add --lora"),
    (["--lora", "--trainer", "lightning"], "--lora works with --trainer transformers or optimum-habana"),
])
def test_lora_where_it_cannot_apply_is_one_line_exit_2(gaudi_home, tmp_path, args, says):
    (tmp_path / "train.py").write_text("print('hi')\n")
    result = subprocess.run([GAUDI_NB, "train", *args], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert says in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.slow
def test_a_lora_run_trains_a_small_adapter_and_export_merges_it(gaudi_home, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # a higher learning rate than full fine-tuning's: only the adapter moves; 16 steps of 64 tokens show it learning
    # (a step's work grows with its tokens)
    result = gaudi_nb("train", "--lora", "--lora-rank", "8", "--max-steps", "16", "--sequence-length", "64", "--learning-rate", "0.005",
                      "--warmup-steps", "2", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads(result.stdout)
    assert record["status"] == "succeeded"
    parameters = record["parameters"]
    assert parameters["trainable"] / parameters["total"] < 0.02  # q_proj and v_proj at rank 8: under 1 % of tiny-llama
    assert record["lora"]["target_modules"] == ["q_proj", "v_proj"] and record["lora"]["rank"] == 8

    losses = [e["loss"] for e in map(json.loads, Path(record["run_dir"], "events.jsonl").read_text().splitlines()) if e["type"] == "step"]
    assert len(losses) == 16
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < first - 0.2, losses  # the mean of the last four steps, not one noisy step

    checkpoint = Path(record["checkpoints"][-1]["path"])
    assert (checkpoint / "adapter_model.safetensors").is_file() and (checkpoint / "adapter_config.json").is_file()
    assert not (checkpoint / "model.safetensors").exists()  # the adapter, not the whole model

    out = tmp_path / "merged"
    exported = gaudi_nb("export", record["run_id"][:20], "--output", str(out), "--json", timeout=120)
    assert exported.returncode == 0, exported.stderr
    assert json.loads(exported.stdout)["kind"] == "lora merged"
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("We hold these truths to be self-evident", return_tensors="pt")["input_ids"]
    base = AutoModelForCausalLM.from_pretrained(Path(record["run_dir"]) / "base_model")
    with_adapter = PeftModel.from_pretrained(base, str(checkpoint)).eval()
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, with_adapter(ids).logits, atol=1e-4)  # merged = base + adapter
    untouched = AutoModelForCausalLM.from_pretrained(Path(record["run_dir"]) / "base_model")
    q_merged, q_base = merged.model.layers[0].self_attn.q_proj.weight, untouched.model.layers[0].self_attn.q_proj.weight
    assert not torch.allclose(q_merged, q_base)  # the trained adapter is in the weights
    assert torch.equal(merged.model.layers[0].mlp.up_proj.weight, untouched.model.layers[0].mlp.up_proj.weight)  # not a target: unchanged
    assert "lora" not in " ".join(name for name, _ in merged.named_parameters())

    again = gaudi_nb("export", record["run_id"], "--output", str(out))
    assert again.returncode == 1 and "is not empty" in again.stderr

    # and it resumes from its adapter-only checkpoint: the trained adapter, not a fresh one, goes on
    resumed = gaudi_nb("resume", record["run_id"], "--max-steps", "18", "--json")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    resumed_record = json.loads(resumed.stdout)
    assert resumed_record["status"] == "succeeded" and resumed_record["attempt"] == 2 and resumed_record["steps_completed"] == 18
    later = [e for e in map(json.loads, Path(record["run_dir"], "events.jsonl").read_text().splitlines()) if e["type"] == "step" and e["attempt"] == 2]
    assert [e["step"] for e in later] == [17, 18]
    assert later[0]["loss"] < first - 0.2, (later[0]["loss"], losses)
    final = Path(resumed_record["checkpoints"][-1]["path"])
    assert (final / "adapter_model.safetensors").is_file() and not (final / "model.safetensors").exists()


# The export of a full (not LoRA) GaudiTrainer checkpoint is checked on test_engine's optimum-habana run: one real run fewer.


@pytest.mark.slow
def test_optimum_habanas_trainer_takes_the_adapter_too_and_gpt2_gets_its_own_targets(gaudi_home, tmp_path):
    from transformers import AutoModelForCausalLM

    result = gaudi_nb("train", "--lora", "--trainer", "optimum-habana", "--model", "tiny-gpt2", "--max-steps", "3", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads(result.stdout)
    assert record["status"] == "succeeded" and record["trainer"] == "optimum-habana"
    assert record["lora"]["target_modules"] == ["c_attn"] and record["parameters"]["trainable"] < record["parameters"]["total"] / 50
    assert (Path(record["checkpoints"][-1]["path"]) / "adapter_model.safetensors").is_file()
    # through the API, in this process (torch and peft imported once): `gaudi-nb export`'s door is checked above
    exported = export_run(api.get_run(record["run_id"]).record(), tmp_path / "gpt2")
    assert exported["kind"] == "lora merged" and exported["architectures"] == ["GPT2LMHeadModel"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "gpt2")
    assert model.config.model_type == "gpt2"
