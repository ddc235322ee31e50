"""RunSpec and NodeSpec: what a run is, typed, validated and serialisable."""
from __future__ import annotations

import math
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import SpecError

Precision = Literal["auto", "bf16", "fp32"]
TrainerName = Literal["auto", "optimum-habana", "transformers", "lightning"]
LrScaling = Literal["none", "linear", "sqrt"]  # how the learning rate follows the global batch
# torch.distributed.run: optimum-habana's own single-node form (gaudi_spawn without --use_mpi/--use_deepspeed)
LauncherName = Literal["auto", "python", "torchrun", "torch.distributed.run", "mpirun", "deepspeed"]

_SSH = re.compile(r"^ssh://(?P<user>[^@/\s:]+)@(?P<host>[^:/\s@]+)(?::(?P<port>\d+))?$")
_PROVIDER = re.compile(r"^(?P<provider>aws|ibm|ibm-cloud):(?P<instance_type>[\w.\-]+)$")  # the old aws:TYPE form: refused, naming provision
_NODE = re.compile(r"^[A-Za-z][\w.\-]*$")
_NODES = re.compile(r"^[A-Za-z][\w.\-]*(?:\s*,\s*[A-Za-z][\w.\-]*)+$")  # NAME1,NAME2: one run across attached nodes
TRACKERS = ("mlflow", "wandb")  # --report-to
LORA_TRAINERS = ("auto", "transformers", "optimum-habana")  # trainers that take a peft model
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # what --env takes: a variable's name, never its value
TARGET_FORMS = "local, an attached node's name (gaudi-nb nodes list) or NAME1,NAME2"
_DATA_SUFFIXES = (".txt", ".text", ".json", ".jsonl", ".parquet", ".csv")


def tracker_names(value: Optional[str]) -> List[str]:
    """--report-to's comma list, checked: each tracker once, in the order given; a ValueError names the known ones."""
    names = [name.strip().lower() for name in (value or "").split(",") if name.strip()]
    unknown = [name for name in names if name not in TRACKERS]
    if unknown:
        raise ValueError(f"unknown tracker '{unknown[0]}': use {', '.join(TRACKERS)} (comma-separated)")
    return list(dict.fromkeys(names))


def attach_first(url: str) -> str:
    """What every door answers to --target ssh://USER@HOST: a run goes to an attached node, by name."""
    return f"{url} is not attached: gaudi-nb nodes attach {url} --name NAME (or %gaudi_attach), then --target NAME"


def looks_like_path(value: str) -> bool:
    """A model or dataset name the user meant as a file: has a path separator prefix or a data suffix."""
    return value.startswith(("/", "./", "../", "~")) or value.lower().endswith(_DATA_SUFFIXES)


@dataclass(frozen=True)
class TargetAddress:
    """A parsed target string: where a run executes."""

    kind: str  # local | node (attached, by name) | nodes (NAME1,NAME2: several attached nodes, node 0 first) | ssh (attach it first)
    text: str
    user: Optional[str] = None
    host: Optional[str] = None
    port: Optional[int] = None


def parse_target(text: str) -> TargetAddress:
    """local | NODE (a name from `gaudi-nb nodes list`) | NODE1,NODE2 (several; node 0 first) | ssh://user@host[:port]
    (parsed, so a door can say to attach it); a ValueError names the forms. A cloud machine is made by
    `gaudi-nb nodes provision`, not named as a target: aws:TYPE is refused with that command."""
    text = text.strip()
    if text == "local":
        return TargetAddress("local", text)
    match = _SSH.match(text)
    if match:
        port = int(match["port"] or 22)
        if not 0 < port < 65536:
            raise ValueError(f"{text}: port must be between 1 and 65535")
        return TargetAddress("ssh", text, user=match["user"], host=match["host"], port=port)
    match = _PROVIDER.match(text)
    if match:
        raise ValueError(f"{text}: make the machine first, then train on it by name: gaudi-nb nodes provision {match['provider']} --instance-type {match['instance_type']} --name NAME, then --target NAME-0")
    if _NODE.match(text):
        return TargetAddress("node", text, host=text)
    if _NODES.match(text):
        names = [name.strip() for name in text.split(",")]
        if "local" in names:
            raise ValueError(f"{text}: 'local' cannot be one of several nodes: name attached nodes only (gaudi-nb nodes list)")
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"{text}: {', '.join(twice)} is named twice: name each node once")
        return TargetAddress("nodes", ",".join(names), host=",".join(names))
    raise ValueError(f"unknown target '{text}': use {TARGET_FORMS}")


def time_limit_seconds(text: str) -> float:
    """`2h`, `90m`, `45s`, `1.5h`, or Slurm's `[D-]HH:MM:SS` as seconds; ValueError naming the forms."""
    text = text.strip()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd])", text)
    if match:
        seconds = float(match[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]
    else:
        match = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d\d):(\d\d)", text)
        if not match:
            raise ValueError(f"'{text}' is not a time limit: use 2h, 90m, 45s or Slurm's 1-00:00:00")
        seconds = int(match[1] or 0) * 86400 + int(match[2]) * 3600 + int(match[3]) * 60 + int(match[4])
    if seconds <= 0:
        raise ValueError(f"'{text}' is not a time limit: it must be longer than zero")
    return seconds


class NodeSpec(BaseModel):
    """One node a run uses: where it is and what it costs."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    target: str = "local"
    devices: int = Field(1, ge=1, le=1024)


class RunSpec(BaseModel):
    """A training run. Field names are the keywords of gaudi_nb.train(), the CLI and the magics."""

    # allow_inf_nan=False: a NaN budget or price compares false with everything, so a meter or an
    # autostop given one would never act; every door refuses it here, in one line
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    name: Optional[str] = Field(None, description="a label for the run")
    model: str = Field("tiny-llama", description="preset name, local path or hub id (org/name)")
    dataset: str = Field("sample-text", description="preset, local .txt/.jsonl/.parquet file(s) (comma-separated), or hub id")
    devices: int = Field(1, ge=1, le=1024, description="devices (ranks) per node")
    nodes: int = Field(1, ge=1, le=512, description="number of nodes")
    precision: Precision = Field("auto", description="bf16 or fp32; auto follows the accelerator")
    batch_size: Union[int, Literal["auto"]] = Field(4, description="sequences per device per step, or auto: the largest that fits, found by a few real steps before training")
    memory_fraction: float = Field(0.9, gt=0, le=1, description="with --batch-size auto: a batch whose peak device memory passes this fraction of the device's memory does not fit")
    sequence_length: int = Field(128, ge=8, le=131072, description="tokens per sequence")
    max_steps: int = Field(50, ge=1, description="optimizer steps to run")
    learning_rate: float = Field(3e-4, gt=0, lt=1, description="peak learning rate (at --base-batch-size when --lr-scaling is on)")
    lr_scaling: LrScaling = Field("none", description="scale the learning rate with the global batch (per-device batch × devices × nodes): linear or sqrt, from --base-batch-size")
    base_batch_size: Optional[int] = Field(None, ge=1, description="the global batch --learning-rate was tuned for (with --lr-scaling)")
    seed: int = Field(42, ge=0)
    trainer: TrainerName = Field("auto", description="auto picks transformers' Trainer, on Gaudi too; optimum-habana (GaudiTrainer) is past end of support")
    launcher: LauncherName = Field("auto", description="auto picks python (one card: the rank itself), torchrun (several on one node) or deepspeed (several Gaudi nodes); torch.distributed.run is optimum-habana's single-node form")
    lazy_mode: bool = Field(False, description="HPU lazy mode (PT_HPU_LAZY_MODE=1, the legacy path); by default eager mode with torch.compile, Intel's default since Gaudi software 1.21")
    warmup_steps: int = Field(3, ge=0, description="first steps left out of throughput and cost per token")
    eval_steps: Optional[int] = Field(None, ge=1, description="evaluate every N steps on held-out data")
    save_steps: Optional[int] = Field(None, ge=1, description="checkpoint every N steps (a final checkpoint is always saved)")
    keep_checkpoints: Optional[int] = Field(None, ge=1, description="keep only the newest N checkpoints (the one a restart resumes from is never deleted)")
    max_restarts: int = Field(0, ge=0, le=100, description="restart crashed ranks up to N times, resuming from the last checkpoint")
    budget_usd: Optional[float] = Field(None, gt=0, description="stop cleanly (with a checkpoint) when spend reaches this")
    price_per_hour: Optional[float] = Field(None, ge=0, description="USD per node-hour; overrides the instance type's price")
    instance_type: Optional[str] = Field(None, description="an instance type from the price catalog")
    idle_minutes: Optional[float] = Field(None, gt=0, description="stop an idle node after this many minutes (remote targets)")
    target: str = Field("local", description=TARGET_FORMS)
    time_limit: Optional[str] = Field(None, description="a Slurm target's job time limit (2h, 90m, 1-00:00:00): the run checkpoints and stops before Slurm's kill")
    script: Optional[str] = Field(None, description="a Python training script every rank runs instead of the built-in trainer")
    workdir: Optional[str] = Field(None, description="the script's folder of code and small files: copied into the run (and to its nodes) as git would keep it (.gitignore honoured); the script runs there")
    lora: bool = Field(False, description="train a LoRA adapter (peft) on the frozen model instead of every weight")
    lora_rank: int = Field(8, ge=1, le=4096, description="LoRA rank r")
    lora_alpha: int = Field(16, ge=1, le=65536, description="LoRA alpha (the update is scaled by alpha / rank)")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA path")
    lora_target_modules: Optional[str] = Field(None, description="comma-separated module names LoRA adapts; default per model (Llama-style: q_proj,v_proj; GPT-2: c_attn)")
    report_to: Optional[str] = Field(None, description="experiment trackers, comma-separated: mlflow, wandb (settings from MLFLOW_TRACKING_URI, WANDB_PROJECT, ...)")
    report_checkpoint: bool = Field(False, description="also upload the final checkpoint (the model's weights) to the --report-to trackers; by default only its path is logged")
    env: Optional[str] = Field(None, description="environment variables the run takes from here, comma-separated names (HF_TOKEN,...): a node gets their values with the run; only the names are in its spec")

    @field_validator("time_limit")
    @classmethod
    def _time_limit(cls, value: Optional[str]) -> Optional[str]:
        if value is not None:
            time_limit_seconds(value)  # a ValueError names the forms
        return value

    def time_limit_s(self) -> Optional[float]:
        """--time-limit in seconds (None: none)."""
        return None if self.time_limit is None else time_limit_seconds(self.time_limit)

    @field_validator("model", "dataset")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("must not be empty")
        return value

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch_size(cls, value: Any) -> Any:
        # one message for both forms (pydantic's union would report each branch)
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        try:
            size = int(value)
        except (TypeError, ValueError):
            size = None
        if isinstance(value, bool) or size is None or size != value and str(size) != str(value).strip():
            raise ValueError("must be a whole number of sequences or auto")
        if not 1 <= size <= 65536:
            raise ValueError("must be between 1 and 65536, or auto")
        return size

    @field_validator("target")
    @classmethod
    def _target_form(cls, value: str) -> str:
        if parse_target(value).kind == "ssh":
            raise ValueError(attach_first(value.strip()))
        return value.strip()

    @model_validator(mode="after")
    def _consistent(self) -> "RunSpec":
        if self.warmup_steps >= self.max_steps and self.max_steps > 1:
            # throughput needs at least one measured step
            object.__setattr__(self, "warmup_steps", max(0, self.max_steps - 1))
        if self.lr_scaling != "none" and self.base_batch_size is None:
            raise ValueError(f"--lr-scaling {self.lr_scaling} needs --base-batch-size B: the global batch --learning-rate was tuned for")
        if self.report_checkpoint and not self.report_to:
            raise ValueError("--report-checkpoint uploads the final checkpoint to a tracker: add --report-to mlflow or wandb")
        if self.batch_size == "auto" and self.script:
            raise ValueError("--batch-size auto sizes the built-in trainer's batch: a --script run picks its own (give a number, or drop --script)")
        return self

    @field_validator("report_to")
    @classmethod
    def _known_trackers(cls, value: Optional[str]) -> Optional[str]:
        return ",".join(tracker_names(value)) or None

    @field_validator("env")
    @classmethod
    def _variable_names(cls, value: Optional[str]) -> Optional[str]:
        names = [name.strip() for name in (value or "").split(",") if name.strip()]
        for name in names:
            if not ENV_NAME.fullmatch(name):
                raise ValueError(f"'{name}' is not a variable name: give names only, comma-separated (HF_TOKEN,WANDB_API_KEY); the values are read from this environment")
        return ",".join(dict.fromkeys(names)) or None

    @model_validator(mode="after")
    def _lora_fits(self) -> "RunSpec":
        # a spec read back from JSON has every field set: only a value other than the default was asked for
        given = sorted(name for name, field in type(self).model_fields.items() if name.startswith("lora_") and getattr(self, name) != field.default)
        if not self.lora and given:
            raise ValueError(f"--{given[0].replace('_', '-')} applies to LoRA runs: add --lora")
        if self.lora and self.script:
            raise ValueError("--lora adapts the built-in trainer's model: a --script run builds its own model (apply peft in the script, or drop --script)")
        if self.lora and self.trainer not in LORA_TRAINERS:
            raise ValueError(f"--lora works with --trainer {' or '.join(LORA_TRAINERS[1:])}, not {self.trainer}")
        return self

    def trackers(self) -> List[str]:
        """The experiment trackers this run reports to (--report-to), in the order given."""
        return [name for name in (self.report_to or "").split(",") if name]

    def env_names(self) -> List[str]:
        """The environment variables this run takes from the client's environment (--env)."""
        return [name for name in (self.env or "").split(",") if name]

    def scaled_learning_rate(self, global_batch_size: int) -> float:
        """The peak learning rate for a global batch (per-device batch × devices × nodes): --learning-rate
        at --base-batch-size, scaled linearly or by the square root; the whole schedule follows it."""
        if self.lr_scaling == "none" or not self.base_batch_size:
            return self.learning_rate
        ratio = global_batch_size / self.base_batch_size
        return self.learning_rate * (ratio if self.lr_scaling == "linear" else math.sqrt(ratio))

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


# Fields that name files on the client: made absolute there (resolve_paths), since ranks run in the run folder.
PATH_FIELDS = ("model", "dataset", "script", "workdir")


def resolve_paths(options: Dict[str, Any], base: Optional[Path] = None) -> Dict[str, Any]:
    """Make the file options (model folder, dataset files, script) absolute against base (the working directory).

    The client does this because the ranks run in the run folder: a relative path given
    there would name nothing. Names that are not paths (presets, hub ids) are left alone.
    """
    base = Path.cwd() if base is None else base
    out = dict(options)

    def absolute(value: str) -> str:
        return str((base / Path(value).expanduser()).resolve())

    for name in PATH_FIELDS:
        value = out.get(name)
        if not isinstance(value, str) or not value.strip():
            continue
        if name == "dataset":
            out[name] = ",".join(absolute(p.strip()) if looks_like_path(p.strip()) else p.strip() for p in value.split(","))
        elif name in ("script", "workdir") or looks_like_path(value) or (base / value).is_dir():
            out[name] = absolute(value)
    return out


@dataclass(frozen=True)
class OptionField:
    """One spec field as a command-line option: the CLI, the magics, the launcher and `gaudi-nb k8s render`
    build theirs from these (RunSpec's, AttachSpec's, ProvisionSpec's)."""

    name: str
    flag: str  # --max-steps
    type: Any  # bool | int | float | str
    choices: Optional[Tuple[str, ...]]
    help: str
    default: Any = None
    required: bool = False
    positional: bool = False  # an argument (the node's address, the provider), not an --option


def option_fields(model: Any = None) -> List[OptionField]:
    """A spec's fields as options (RunSpec's by default), in the order the spec declares them."""
    fields = []
    for name, field in (model or RunSpec).model_fields.items():
        py_type, choices = _option_type(field.annotation)
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        required = field.is_required()
        default = None if required else field.default
        default_help = "" if default is None or extra.get("positional") else f" (default {default})"
        fields.append(OptionField(name, "--" + name.replace("_", "-"), py_type, choices, (field.description or name) + default_help,
                                  default, required, bool(extra.get("positional"))))
    return fields


def _option_type(annotation: Any) -> Tuple[Any, Optional[Tuple[str, ...]]]:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return str, tuple(str(a) for a in args)
    if args:  # Optional[X]
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _option_type(inner[0])
    for candidate in (bool, int, float):
        if annotation is candidate:
            return candidate, None
    return str, None


def parse_mapping(text: str, where: str) -> Dict[str, Any]:
    """RunSpec fields from YAML or JSON text (a spec file, a %%gaudi_train cell); one-line SpecErrors."""
    import yaml

    try:
        # an alias (*name) is refused: run options never need one, and nested aliases (a "billion laughs")
        # make a value whose every use (a check, an error message) costs exponential time and memory
        if "*" in text and any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=yaml.SafeLoader)):
            raise SpecError(f"{where}: YAML aliases (*name) are not taken in run options: write each value out")
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise SpecError(f"{where} is not valid YAML{at}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{where} must hold a mapping of run options (model: tiny-llama, devices: 2, ...)")
    # null, and "None" (what {var} of a Python None expands to), leave an option unset
    return {str(k).replace("-", "_"): v for k, v in data.items() if v is not None and v != "None"}


def _shown(value: Any) -> str:
    """What was given, as a short repr: a few items, a few levels, whatever the value's size."""
    import reprlib

    short = reprlib.Repr()
    short.maxlevel, short.maxlist, short.maxtuple, short.maxdict, short.maxstring, short.maxother = 2, 4, 4, 4, 80, 80
    return short.repr(value)


def describe_validation_error(exc: ValidationError) -> str:
    """Turn pydantic's report into one line: the field, what is wrong, what was given."""
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "spec"
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return f"unknown option '{field}': see gaudi-nb train --help for the options"
    if err["type"] == "missing":
        return f"{field}: required: give --{field.replace('_', '-')}"
    if err["type"] == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return f"{field}: must be one of {expected} (got {_shown(err.get('input'))})"
    got = err.get("input")
    said = got is not None and isinstance(got, str) and got.strip() in message  # the message names it already
    suffix = f" (got {_shown(got)})" if got is not None and not isinstance(got, dict) and not said else ""
    more = f"; and {len(exc.errors()) - 1} more problem(s)" if len(exc.errors()) > 1 else ""
    return f"{field}: {message[:1].lower()}{message[1:]}{suffix}{more}"
