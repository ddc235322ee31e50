"""The few shims optimum-habana 1.21.2 needs to run off a Gaudi card; each says why it exists.

On a real Gaudi node none of these change behaviour: they only apply when
habana_frameworks is absent (CPU here, CUDA where a GPU is lent).
"""
from __future__ import annotations

import importlib.util
import os
import sys
import types
from typing import Any


def import_optimum_habana() -> types.ModuleType:
    """Return optimum.habana.transformers.

    Why: optimum/habana/__init__.py calls check_synapse_version(), which runs
    `pip list | grep habana-torch-plugin` and indexes the empty output (IndexError
    in utils/misc.py) when the Gaudi PyTorch plugin is not installed. Registering
    the package module without running its __init__ lets the submodules import.
    """
    if importlib.util.find_spec("habana_frameworks") is not None:
        import optimum.habana.transformers as oh_transformers

        return oh_transformers
    if "optimum.habana" not in sys.modules:
        spec = importlib.util.find_spec("optimum")
        if spec is None or spec.submodule_search_locations is None:
            raise ImportError("optimum-habana is not installed: pip install 'gaudi_nb[optimum-habana]'")
        base = os.path.join(list(spec.submodule_search_locations)[0], "habana")
        if not os.path.isdir(base):
            raise ImportError("optimum-habana is not installed: pip install 'gaudi_nb[optimum-habana]'")
        package = types.ModuleType("optimum.habana")
        package.__path__ = [base]
        package.__file__ = os.path.join(base, "__init__.py")
        sys.modules["optimum.habana"] = package
    import optimum.habana.transformers as oh_transformers

    return oh_transformers


def patch_trainer_off_hpu(trainer: Any) -> None:
    """Why: GaudiTrainer.log calls the module-level get_hpu_memory_stats(), which imports
    habana_frameworks on every log; off HPU there are no HPU memory stats to add."""
    import optimum.habana.transformers.trainer as oh_trainer

    oh_trainer.get_hpu_memory_stats = lambda *args, **kwargs: {}


def adapt_transformers_to_gaudi() -> None:
    """optimum-habana's own adaptation of transformers, run before any model is built (HPU only:
    its imports need habana_frameworks, so it cannot run elsewhere)."""
    import_optimum_habana()
    from optimum.habana.transformers.modeling_utils import adapt_transformers_to_gaudi as adapt

    adapt()


def patch_model_off_hpu(model: Any) -> None:
    """Why: GaudiTrainer reads Gaudi-only flags from model.generation_config (attn_softmax_bf16 for
    Llama, Qwen2 and Gemma; the fused-SDPA and flash-attention flags in their forward). On HPU they
    exist because adapt_transformers_to_gaudi() ran before the model was built and swapped in
    GaudiGenerationConfig (see trainers.prepare_transformers); off HPU that function cannot be
    imported, so the stock config gets the flags here, set off (they select HPU kernels)."""
    config = getattr(model, "generation_config", None)
    if config is None:
        return
    for flag in ("attn_softmax_bf16", "use_flash_attention", "flash_attention_recompute", "flash_attention_causal_mask"):
        setattr(config, flag, False)


def load_checkpoints_on_cpu(trainer: Any) -> None:
    """Resume a CPU run of several ranks: the Trainer loads optimizer.pt with map_location=args.device,
    which is "cpu:0" there, and torch.load cannot restore a location with an index on CPU."""
    original = trainer._load_optimizer_and_scheduler

    def load(checkpoint: Any) -> Any:
        import torch

        real_load = torch.load

        def cpu_load(*args: Any, **kwargs: Any) -> Any:
            if str(kwargs.get("map_location", "")).startswith("cpu"):
                kwargs["map_location"] = "cpu"
            return real_load(*args, **kwargs)

        torch.load = cpu_load
        try:
            return original(checkpoint)
        finally:
            torch.load = real_load

    trainer._load_optimizer_and_scheduler = load
