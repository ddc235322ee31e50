"""RunSpec and NodeSpec: what a run is, typed, validated and serialisable."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import SpecError

Precision = Literal["auto", "bf16", "fp32"]
TrainerName = Literal["auto", "optimum-habana", "transformers"]
LauncherName = Literal["auto", "torchrun", "mpirun", "deepspeed"]

_TARGET = re.compile(r"^(local|ssh://[^@/\s]+@[^:/\s]+(:\d+)?|aws:[\w.\-]+)$")
_DATA_SUFFIXES = (".txt", ".text", ".json", ".jsonl", ".parquet", ".csv")


def looks_like_path(value: str) -> bool:
    """A model or dataset name the user meant as a file: has a path separator prefix or a data suffix."""
    return value.startswith(("/", "./", "../", "~")) or value.lower().endswith(_DATA_SUFFIXES)


class NodeSpec(BaseModel):
    """One node a run uses: where it is and what it costs."""

    model_config = ConfigDict(extra="forbid")
    target: str = "local"
    devices: int = Field(1, ge=1, le=1024)


class RunSpec(BaseModel):
    """A training run. Field names are the keywords of gaudi_nb.train(), the CLI and the magics."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: Optional[str] = Field(None, description="a label for the run")
    model: str = Field("tiny-llama", description="preset name, local path or hub id (org/name)")
    dataset: str = Field("sample-text", description="preset, local .txt/.jsonl/.parquet file(s) (comma-separated), or hub id")
    devices: int = Field(1, ge=1, le=1024, description="devices (ranks) per node")
    nodes: int = Field(1, ge=1, le=512, description="number of nodes")
    precision: Precision = Field("auto", description="bf16 or fp32; auto follows the accelerator")
    batch_size: int = Field(4, ge=1, le=65536, description="sequences per device per step")
    sequence_length: int = Field(128, ge=8, le=131072, description="tokens per sequence")
    max_steps: int = Field(50, ge=1, description="optimizer steps to run")
    learning_rate: float = Field(3e-4, gt=0, lt=1, description="peak learning rate")
    seed: int = Field(42, ge=0)
    trainer: TrainerName = Field("auto", description="auto picks optimum-habana where Gaudi software is present")
    launcher: LauncherName = Field("auto", description="auto picks torchrun (one node) or deepspeed (several Gaudi nodes)")
    lazy_mode: bool = Field(True, description="HPU lazy mode (PT_HPU_LAZY_MODE=1); eager otherwise")
    warmup_steps: int = Field(3, ge=0, description="first steps left out of throughput and cost per token")
    eval_steps: Optional[int] = Field(None, ge=1, description="evaluate every N steps on held-out data")
    save_steps: Optional[int] = Field(None, ge=1, description="checkpoint every N steps (a final checkpoint is always saved)")
    budget_usd: Optional[float] = Field(None, gt=0, description="stop cleanly (with a checkpoint) when spend reaches this")
    price_per_hour: Optional[float] = Field(None, ge=0, description="USD per node-hour; overrides the instance type's price")
    instance_type: Optional[str] = Field(None, description="an instance type from the price catalog")
    idle_minutes: Optional[float] = Field(None, gt=0, description="stop an idle node after this many minutes (remote targets)")
    target: str = Field("local", description="local, ssh://user@host[:port] or aws:INSTANCE_TYPE")
    script: Optional[str] = Field(None, description="a Python training script every rank runs instead of the built-in trainer")

    @field_validator("script")
    @classmethod
    def _script_exists(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not Path(value).expanduser().is_file():
            raise ValueError(f"file not found: {value}")
        return value

    @field_validator("model", "dataset")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("must not be empty")
        return value

    @field_validator("target")
    @classmethod
    def _target_form(cls, value: str) -> str:
        if not _TARGET.match(value):
            raise ValueError("must be local, ssh://user@host[:port] or aws:INSTANCE_TYPE")
        return value

    @field_validator("dataset")
    @classmethod
    def _dataset_files_exist(cls, value: str) -> str:
        for part in value.split(","):
            part = part.strip()
            if looks_like_path(part) and not Path(part).expanduser().exists():
                raise ValueError(f"file not found: {part}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "RunSpec":
        if self.warmup_steps >= self.max_steps and self.max_steps > 1:
            # throughput needs at least one measured step
            object.__setattr__(self, "warmup_steps", max(0, self.max_steps - 1))
        return self

    @classmethod
    def from_options(cls, **options: Any) -> "RunSpec":
        """Build a spec from keyword options (None means "not given"), with one-line errors."""
        given = {k.replace("-", "_"): v for k, v in options.items() if v is not None}
        try:
            return cls(**given)
        except ValidationError as exc:
            raise SpecError(describe_validation_error(exc)) from None

    def to_json_dict(self) -> Dict[str, Any]:
        return self.model_dump(mode="json")


def describe_validation_error(exc: ValidationError) -> str:
    """Turn pydantic's report into one line: the field, what is wrong, what was given."""
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "spec"
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return f"unknown option '{field}': see gaudi-nb train --help for the options"
    if err["type"] == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return f"{field}: must be one of {expected} (got {err.get('input')!r})"
    got = err.get("input")
    suffix = f" (got {got!r})" if got is not None and not isinstance(got, dict) else ""
    more = f"; and {len(exc.errors()) - 1} more problem(s)" if len(exc.errors()) > 1 else ""
    return f"{field}: {message[:1].lower()}{message[1:]}{suffix}{more}"
