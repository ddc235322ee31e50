"""Lightning as a gaudi_nb trainer: the preset model in a LightningModule, and GaudiNbCallback, which gives any
Lightning Trainer in a gaudi_nb run its events, stop requests, budget stop and complete checkpoints."""
from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..errors import GaudiNbError
from ..rundir import RESUME_FROM_ENV
from .callback import EventCallback, RankProgress
from .rank import node_placement

try:
    import lightning.pytorch as pl
except ImportError as exc:  # the rank reports it as one line (worker_error)
    raise GaudiNbError(f"--trainer lightning needs Lightning, which does not import here ({exc}): pip install 'gaudi_nb[lightning]', or use --trainer transformers") from None

# The file inside checkpoints/checkpoint-N: Lightning saves one file, gaudi_nb's checkpoints are folders
# (complete only with their marker), so a Lightning checkpoint is a folder holding this file.
CHECKPOINT_FILE = "lightning.ckpt"
LIGHTNING_HABANA_NOTE = "lightning-habana's last release (1.6.0) is from 2024-06"


@dataclass(frozen=True)
class LightningChoice:
    """What a Lightning Trainer runs on: names, so the choice is pinned by tests without the device."""

    accelerator: str  # cpu | cuda | hpu
    strategy: str  # auto (one device) | ddp | hpu_single | hpu_ddp (lightning-habana's)
    precision: str  # Lightning's names: 32-true | bf16-mixed
    needs_lightning_habana: bool


def choose(accelerator: str, world_size: int, precision: str) -> LightningChoice:
    """The accelerator, strategy and precision for gaudi_nb's accelerator name: the CPU path is the
    HPU path minus the device (HPU support left Lightning core in 2023 for lightning-habana)."""
    lightning_precision = "bf16-mixed" if precision == "bf16" else "32-true"
    several = world_size > 1
    if accelerator == "hpu":
        return LightningChoice("hpu", "hpu_ddp" if several else "hpu_single", lightning_precision, True)
    return LightningChoice(accelerator, "ddp" if several else "auto", lightning_precision, False)


def import_lightning_habana() -> Any:
    try:
        import lightning_habana
    except Exception as exc:  # missing, or built for another Lightning / Gaudi software
        raise GaudiNbError(
            f"--trainer lightning on Gaudi needs lightning-habana, which does not import here ({type(exc).__name__}: {exc}); "
            f"{LIGHTNING_HABANA_NOTE}: use --trainer optimum-habana or --trainer transformers"
        ) from None
    return lightning_habana


def trainer_devices(choice: LightningChoice, devices: int, num_nodes: int) -> Dict[str, Any]:
    """Lightning Trainer keywords for the choice. torchrun started the ranks: Lightning finds its
    variables (TorchElasticEnvironment) and starts no processes of its own."""
    placement: Dict[str, Any] = dict(devices=devices, num_nodes=num_nodes)
    if not choice.needs_lightning_habana:
        return dict(placement, accelerator=choice.accelerator, strategy=choice.strategy, precision=choice.precision)
    import_lightning_habana()
    from lightning_habana.pytorch.accelerator import HPUAccelerator
    from lightning_habana.pytorch.plugins import HPUPrecisionPlugin
    from lightning_habana.pytorch.strategies import HPUDDPStrategy, SingleHPUStrategy

    strategy = HPUDDPStrategy() if choice.strategy == "hpu_ddp" else SingleHPUStrategy()
    return dict(placement, accelerator=HPUAccelerator(), strategy=strategy, plugins=[HPUPrecisionPlugin(precision=choice.precision)])


class GaudiNbCallback(pl.Callback):
    """gaudi_nb's part of a Lightning run: step events (rank 0), the stop every rank agrees on (a stop
    request or the budget), and checkpoints in the run's checkpoints/ folder, complete with their marker.

    In a --script run gaudi_nb adds it to every Trainer the script makes; to add it yourself:
    ``Trainer(..., callbacks=[GaudiNbCallback()])``. Every --save-steps steps, at a stop and at the
    end it saves checkpoints/checkpoint-N/lightning.ckpt; a restart or `gaudi-nb resume` fits from it.
    """

    def __init__(self, progress: Optional[RankProgress] = None, *, save_steps: Optional[int] = None) -> None:
        self._progress = progress  # None: the script run's, made at setup
        self._save_steps = save_steps
        self._from_script = progress is None
        # outside a gaudi_nb run (the same script started with plain python) the callback does nothing
        self._off = progress is None and not os.environ.get("GAUDI_NB_RUN_DIR")
        self._last_step = 0
        self._saved_step = -1
        self._grad_norm: Optional[float] = None
        self._learning_rate: Optional[float] = None
        self._world_size = 1

    @property
    def progress(self) -> RankProgress:
        if self._progress is None:
            self._progress = _script_progress()
            self._save_steps = self._save_steps or _script_spec().save_steps
        return self._progress

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self._off:
            return
        progress = self.progress
        self._world_size = trainer.world_size
        if self._from_script and trainer.max_steps and trainer.max_steps > 0:
            progress.max_steps = trainer.max_steps  # the script's Trainer decides how long it trains

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if self._off:
            return
        self._last_step = self._saved_step = trainer.global_step
        self.progress.train_started()

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if self._off or not self.progress.is_main:
            return
        import torch

        self._learning_rate = _float_or_none(optimizer.param_groups[0].get("lr")) if optimizer.param_groups else None  # the rate this step uses

        # before clipping, as transformers' Trainer reports it; the gradients are already all-reduced
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        self._grad_norm = float(torch.nn.utils.get_total_norm(grads)) if grads else None

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if self._off or step == self._last_step:
            return  # accumulating gradients: no optimizer step yet
        self._last_step = step
        progress = self.progress
        loss = _loss_of(outputs)
        if loss is not None:
            # the mean over ranks, as transformers' Trainer logs it (one scalar, as its logging does)
            loss = float(trainer.strategy.reduce(loss.detach().clone(), reduce_op="mean"))
        save, stop = progress.step_ended(step)
        if loss is not None:
            tokens, samples = (None, None) if progress.tokens_per_step else _batch_counts(batch, self._world_size)
            # the rate this step used, as transformers' Trainer logs it (the scheduler has moved on since)
            rate = self._learning_rate if self._learning_rate is not None else _learning_rate(trainer)
            progress.emit_step(step, loss, learning_rate=rate, grad_norm=self._grad_norm, tokens=tokens, samples=samples)
        if save or (self._save_steps and step % self._save_steps == 0):
            self._save(trainer, step)
        if stop:
            trainer.should_stop = True

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if self._off or trainer.sanity_checking:
            return
        for name in ("eval_loss", "val_loss"):
            value = trainer.callback_metrics.get(name)
            if value is not None:
                self.progress.emit_eval(trainer.global_step, float(value))
                return

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        step = trainer.global_step
        if not self._off and step > self._saved_step and step > 0:  # the script's Trainer ended by epochs, not steps
            self.progress.max_steps = min(self.progress.max_steps, step)
            self._save(trainer, step)

    def _save(self, trainer: Any, step: int) -> None:
        if step == self._saved_step:
            return
        path = self.progress.folder.checkpoint_path(step)
        path.mkdir(parents=True, exist_ok=True)
        # every rank calls it (it waits for all of them); rank 0 writes the file
        trainer.save_checkpoint(str(path / CHECKPOINT_FILE))
        self._saved_step = step
        self.progress.checkpoint_saved(path, step)


def resume_path(folder: Optional[str] = None) -> Optional[str]:
    """The Lightning checkpoint file this attempt continues from ($GAUDI_NB_RESUME_FROM's), or None."""
    folder = folder or os.environ.get(RESUME_FROM_ENV)
    if not folder:
        return None
    path = Path(folder) / CHECKPOINT_FILE
    return str(path) if path.is_file() else None


def _loss_of(outputs: Any) -> Any:
    if isinstance(outputs, dict):
        outputs = outputs.get("loss")
    return outputs if hasattr(outputs, "detach") else None


def _learning_rate(trainer: Any) -> Optional[float]:
    try:
        return float(trainer.optimizers[0].param_groups[0]["lr"])
    except (IndexError, KeyError, AttributeError):
        return None


def _float_or_none(value: Any) -> Optional[float]:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _batch_counts(batch: Any, world_size: int) -> Any:
    """(tokens, samples) of one step on every rank, read from a script's batch: token ids where the
    batch names them (input_ids), samples from its first tensor; None where it cannot tell."""
    first = batch
    if isinstance(batch, dict):
        ids: Any = batch.get("input_ids")
        if hasattr(ids, "numel"):
            return int(ids.numel()) * world_size, int(ids.shape[0]) * world_size
        first = next((v for v in batch.values() if hasattr(v, "shape")), None)
    elif isinstance(batch, (list, tuple)) and batch:
        first = batch[0]
    if hasattr(first, "shape") and len(first.shape) > 0:
        return None, int(first.shape[0]) * world_size
    return None, None


# -- a --script run's callback: its context comes from the script helpers -------------------
def _script_spec() -> Any:
    from . import script

    return script.spec()


def _script_progress() -> RankProgress:
    from . import script

    ctx = script._ctx()
    spec = ctx.spec
    return RankProgress(
        ctx.writer,
        ctx.folder,
        tokens_per_step=None,  # read from each batch
        samples_per_step=None,
        warmup_steps=spec.warmup_steps,
        max_steps=spec.max_steps,
        memory_stats=ctx.accelerator.memory_stats,
        is_main=ctx.rank == 0,
        keep_checkpoints=spec.keep_checkpoints,
    )


def add_to_every_trainer(trainer_class: Any) -> None:
    """Make every Trainer a --script builds carry GaudiNbCallback and resume from the attempt's checkpoint.

    Why patch rather than ask: a script written for plain Lightning then reports steps, obeys
    %gaudi_stop and the budget, and saves complete checkpoints without a line changed; a script
    that already adds GaudiNbCallback keeps its own (it is not added twice).
    """
    if getattr(trainer_class.__init__, "_gaudi_nb", False):
        return
    original_init, original_fit = trainer_class.__init__, trainer_class.fit

    @functools.wraps(original_init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        callbacks = kwargs.get("callbacks")
        callbacks = [] if callbacks is None else list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
        if not any(isinstance(c, GaudiNbCallback) for c in callbacks):
            callbacks.append(GaudiNbCallback())
        kwargs["callbacks"] = callbacks
        original_init(self, *args, **kwargs)

    @functools.wraps(original_fit)
    def fit(self: Any, *args: Any, **kwargs: Any) -> Any:
        # a restart or resume starts the script again: fit continues from the checkpoint gaudi_nb chose
        if len(args) < 5 and kwargs.get("ckpt_path") is None and resume_path():
            kwargs["ckpt_path"] = resume_path()
        return original_fit(self, *args, **kwargs)

    __init__._gaudi_nb = True  # type: ignore[attr-defined]
    trainer_class.__init__ = __init__
    trainer_class.fit = fit


# -- the built-in trainer: a preset model through Lightning -----------------------------------
class PresetModule(pl.LightningModule):
    """A causal LM from the presets, trained as transformers' Trainer trains it: AdamW, linear decay
    from the peak learning rate over max_steps, gradients clipped at 1.0."""

    def __init__(self, model: Any, learning_rate: float, max_steps: int) -> None:
        super().__init__()
        self.model = model
        self.learning_rate = learning_rate
        self.max_steps = max_steps

    def training_step(self, batch: Dict[str, Any], batch_idx: int) -> Any:
        return self.model(input_ids=batch["input_ids"], labels=batch["labels"]).loss

    def validation_step(self, batch: Dict[str, Any], batch_idx: int) -> None:
        loss = self.model(input_ids=batch["input_ids"], labels=batch["labels"]).loss
        self.log("eval_loss", loss, sync_dist=True, batch_size=batch["input_ids"].shape[0])

    def configure_optimizers(self) -> Any:
        import torch
        from transformers import get_linear_schedule_with_warmup

        optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.learning_rate, weight_decay=0.0)
        schedule = get_linear_schedule_with_warmup(optimizer, 0, self.max_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


@dataclass
class _State:
    global_step: int = 0


class LightningRun:
    """The built-in trainers' interface (train(resume_from_checkpoint), state.global_step) over Lightning."""

    def __init__(self, inputs: Any) -> None:
        self.inputs = inputs
        self.state = _State()
        events = [c for c in inputs.callbacks if isinstance(c, EventCallback)]
        if not events:
            raise ValueError("the Lightning trainer needs gaudi_nb's EventCallback among the callbacks")
        self.callback = GaudiNbCallback(events[0].progress, save_steps=inputs.save_steps)
        # transformers' TrainerCallbacks cannot run in Lightning; Lightning callbacks go in as they are
        self.extra_callbacks: List[Any] = [c for c in inputs.callbacks if isinstance(c, pl.Callback)]

    def train(self, resume_from_checkpoint: Optional[str] = None) -> None:
        from torch.utils.data import DataLoader

        inputs = self.inputs
        world_size = int(os.environ.get("WORLD_SIZE", 1))
        devices, num_nodes, node_rank = node_placement(os.environ)
        # Lightning's own environment reads the node's rank from NODE_RANK (or GROUP_RANK): DeepSpeed's
        # launcher sets CROSS_RANK only, and without this every node would claim node 0's global ranks
        os.environ.setdefault("NODE_RANK", str(node_rank))
        choice = choose(inputs.accelerator, world_size, inputs.precision)
        placement = trainer_devices(choice, devices, num_nodes)
        pl.seed_everything(inputs.seed, verbose=False)
        logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # its banner lines would fill train.log
        evaluate = bool(inputs.eval_steps and inputs.eval_dataset is not None)
        trainer = pl.Trainer(
            **placement,
            max_steps=inputs.max_steps,
            max_epochs=-1,
            logger=False,
            enable_checkpointing=False,  # gaudi_nb's callback saves, into checkpoints/checkpoint-N
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            gradient_clip_val=1.0,
            val_check_interval=inputs.eval_steps if evaluate else None,
            check_val_every_n_epoch=None if evaluate else 1,
            limit_val_batches=None if evaluate else 0,
            default_root_dir=inputs.output_dir,
            callbacks=[self.callback, *self.extra_callbacks],
        )
        module = PresetModule(inputs.model, inputs.learning_rate, inputs.max_steps)
        train_loader = DataLoader(inputs.train_dataset, batch_size=inputs.batch_size, shuffle=True, num_workers=0)
        eval_loader = DataLoader(inputs.eval_dataset, batch_size=inputs.batch_size, num_workers=0) if evaluate else None
        ckpt = resume_path(resume_from_checkpoint) if resume_from_checkpoint else None
        if resume_from_checkpoint and ckpt is None:
            raise FileNotFoundError(f"{resume_from_checkpoint} holds no {CHECKPOINT_FILE}: it was not saved by the Lightning trainer")
        trainer.fit(module, train_loader, eval_loader, ckpt_path=ckpt)
        self.state.global_step = trainer.global_step


def lightning_trainer(inputs: Any) -> LightningRun:
    return LightningRun(inputs)

