"""`gaudi-nb export`: a run's last complete checkpoint as a model folder that from_pretrained loads (a LoRA adapter merged in)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional

from .errors import GaudiNbError
from .rundir import BASE_MODEL_DIR, TOKENIZER_DIR, RunFolder

# What a Trainer checkpoint holds besides the model: left out of an export. gaudi_config.json is
# GaudiTrainer's training configuration (fused optimizer, autocast): no serving engine reads it.
TRAINING_STATE = ("optimizer.pt", "scheduler.pt", "trainer_state.json", "training_args.bin", "scaler.pt", "gaudi_config.json")
# optimum-habana's model classes are transformers' own with this prefix (GaudiLlamaForCausalLM); a
# checkpoint GaudiTrainer saved on HPU names them in config.json, and vLLM and TGI, which resolve a
# model by `architectures`, reject those names (HabanaAI/vllm-fork #511).
GAUDI_CLASS_PREFIX = "Gaudi"


def export_run(record: Dict[str, Any], output: Optional[Path] = None) -> Dict[str, Any]:
    """Write the model of the run's last complete checkpoint to `output` (default RUN_DIR/export);
    returns what was written. A LoRA checkpoint holds only the adapter: it is merged into its base."""
    run_dir = Path(record.get("run_dir") or "")
    run_id = record.get("run_id")
    if not record.get("run_dir") or not run_dir.is_dir():
        raise GaudiNbError(f"run {run_id}'s folder is not on this machine ({record.get('run_dir')}): run gaudi-nb export on the node that trained it")
    folder = RunFolder(run_dir)
    checkpoint = folder.last_checkpoint()
    if checkpoint is None:
        raise GaudiNbError(f"run {run_id} has no complete checkpoint to export: a run saves one at its end (or every --save-steps)")
    target = Path(output) if output is not None else run_dir / "export"
    if target.exists() and any(target.iterdir()):
        raise GaudiNbError(f"{target} is not empty: name another folder with --output")
    target.mkdir(parents=True, exist_ok=True)
    source = Path(checkpoint.path)
    adapter_config = source / "adapter_config.json"
    if adapter_config.is_file():
        _merge_adapter(run_dir, source, json.loads(adapter_config.read_text()), target)
        kind = "lora merged"
    else:
        _copy_model(source, target)
        kind = "model"
    architectures = upstream_architectures(target / "config.json")
    tokenizer = run_dir / TOKENIZER_DIR
    if tokenizer.is_dir():
        for item in tokenizer.iterdir():
            shutil.copy2(item, target / item.name)
    return {"run_id": run_id, "checkpoint": str(source), "step": checkpoint.step, "output": str(target), "kind": kind,
            "tokenizer": tokenizer.is_dir(), "architectures": architectures}


def upstream_architectures(config_path: Path) -> List[str]:
    """Rewrite config.json's `architectures` to transformers' own class names (GaudiLlamaForCausalLM →
    LlamaForCausalLM), the names serving engines look up; returns them."""
    config = json.loads(config_path.read_text())
    names = [str(name) for name in config.get("architectures") or []]
    upstream = [name[len(GAUDI_CLASS_PREFIX):] if name.startswith(GAUDI_CLASS_PREFIX) else name for name in names]
    if upstream != names:
        config["architectures"] = upstream
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return upstream


def _copy_model(source: Path, target: Path) -> None:
    """A full-weights checkpoint is already a model folder: copy it without the optimizer and the rng states."""
    if not (source / "config.json").is_file():
        raise GaudiNbError(f"{source} holds no model (no config.json): was it written by a --script run? Export its files yourself")
    for item in source.iterdir():
        if item.is_file() and item.name not in TRAINING_STATE and not item.name.startswith(("rng_state", "gaudi_nb_")):
            shutil.copy2(item, target / item.name)


def _merge_adapter(run_dir: Path, checkpoint: Path, adapter_config: Dict[str, Any], target: Path) -> None:
    try:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM
    except ImportError:
        raise GaudiNbError("exporting a LoRA run needs peft: pip install 'gaudi_nb[lora]'") from None
    local_base = run_dir / BASE_MODEL_DIR
    base_source = str(local_base) if (local_base / "config.json").is_file() else adapter_config.get("base_model_name_or_path")
    if not base_source:
        raise GaudiNbError(f"{checkpoint}: the adapter does not name its base model, and the run folder has no {BASE_MODEL_DIR}/")
    base = AutoModelForCausalLM.from_pretrained(base_source)
    merged = PeftModel.from_pretrained(base, str(checkpoint)).merge_and_unload()
    merged.save_pretrained(str(target))
