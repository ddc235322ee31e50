"""Training start-up: a plain transformers Trainer under torchrun against `gaudi-nb train`. Prints JSON.

Both arms train the same model on the same data with the same arguments: the tiny-llama preset
(4 layers × 256 wide, the byte-level BPE tokenizer trained on the shipped sample text, cached),
batch 4, sequence 128, 2 ranks, 60 steps, on CPU. The plain arm is this file itself, started by
`python -u -m torch.distributed.run` exactly as gaudi_nb's launcher starts its worker; it imports
nothing from gaudi_nb.

Measured the same way for both (unix seconds, from the moment the benchmark starts the command):
  first_step_s  when rank 0's on_log saw step 1 (gaudi-nb: the `step` event's `t`; plain: a callback)
  wall_s        when the command exited (gaudi-nb: the client printed the record and exited)
Arms alternate (plain, gaudi-nb, then gaudi-nb, plain, ...) after one untimed warm-up each, so
drift on a shared machine hits both; the figures are medians. For gaudi-nb, `stages` splits the
time by the run's own timestamps (agent.pid, run_start, worker_start, steps, checkpoint,
run_end); for plain the same points from its callback.

    python benchmarks/startup.py                 # 5 repetitions
    python benchmarks/startup.py --reps 3 --steps 60 --devices 2
    python benchmarks/startup.py --variant patched=/tmp/tree   # also gaudi-nb from another source tree, interleaved
    python -m torch.distributed.run ... benchmarks/startup.py --plain-rank --timeline FILE   (the plain arm; internal)

Goal (issue 7): gaudi-nb's first step within 1 s of plain's, its wall clock within 2 s.
"""
from __future__ import annotations

import time

T_SCRIPT = time.time()  # the plain rank's first instruction: before any import below

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Dict, List, Optional, Tuple  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SAMPLE_TEXT = REPO / "gaudi_nb" / "worker" / "data" / "sample_text.txt"
BIN = Path(sys.executable).parent
VOCAB = 2048  # gaudi_nb.worker.data.LOCAL_VOCAB_SIZE
SEED = 42  # RunSpec.seed's default


# -- the plain arm: one rank of a plain transformers Trainer ---------------------------------------
def plain_rank(args: argparse.Namespace) -> None:
    """What gaudi_nb's worker does for tiny-llama + sample-text, written the plain way."""
    import hashlib

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Trainer, TrainerCallback, TrainingArguments

    rank = int(os.environ.get("RANK", 0))
    marks: Dict[str, float] = {"script": T_SCRIPT, "imported": time.time()}
    if "OMP_NUM_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    texts = [SAMPLE_TEXT.read_text(encoding="utf-8")]
    digest = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]
    cached = Path(args.cache) / f"tokenizer-bpe{VOCAB}-{digest}.json"
    if cached.exists():
        bpe = Tokenizer.from_file(str(cached))
    else:
        bpe = Tokenizer(models.BPE(unk_token=None))
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        bpe.save(str(tmp))
        os.replace(tmp, cached)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    torch.manual_seed(SEED)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=max(512, args.sequence_length), tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    ids: List[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        ids.append(tokenizer.eos_token_id)
    blocks = [ids[i : i + args.sequence_length] for i in range(0, len(ids) - args.sequence_length + 1, args.sequence_length)]

    class Blocks(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(blocks)

        def __getitem__(self, index: int) -> Dict[str, Any]:
            x = torch.tensor(blocks[index], dtype=torch.long)
            return {"input_ids": x, "labels": x.clone()}

    marks["model_built"] = time.time()

    class Marks(TrainerCallback):
        def on_train_begin(self, *a: Any, **k: Any) -> None:
            marks["train_begin"] = time.time()

        def on_log(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            logs = kwargs.get("logs")
            if logs and "loss" in logs:
                marks.setdefault("first_step", time.time())
                marks["last_step"] = time.time()

    training_args = TrainingArguments(  # gaudi_nb.worker.trainers._common_arguments on CPU
        output_dir=str(Path(args.timeline).parent / "plain-out"),
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        max_steps=args.steps,
        learning_rate=3e-4,
        seed=SEED,
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        bf16=False,
        use_cpu=True,
        ddp_backend="gloo",
        log_level="warning",
        ddp_find_unused_parameters=False,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=Blocks(), callbacks=[Marks()])
    trainer.train()
    marks["train_end"] = time.time()
    if rank == 0:
        Path(args.timeline).write_text(json.dumps(marks))


# -- the two commands --------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_plain(work: Path, index: int, args: argparse.Namespace) -> Dict[str, Any]:
    timeline = work / f"plain-{index}.json"
    argv = [sys.executable, "-u", "-m", "torch.distributed.run", "--nproc-per-node", str(args.devices), "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
            str(Path(__file__).resolve()), "--plain-rank", "--timeline", str(timeline), "--cache", str(work / "plain-cache"),
            "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--sequence-length", str(args.sequence_length)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if "OMP_NUM_THREADS" not in env:  # what gaudi_nb's launcher gives each rank on CPU: an even share of the cores
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.devices))
    t0 = time.time()
    done = subprocess.run(argv, env=env, cwd=work, capture_output=True, text=True, timeout=900)
    t_end = time.time()
    if done.returncode != 0:
        raise RuntimeError(f"plain arm failed ({done.returncode}): {done.stderr[-3000:]}")
    m = json.loads(timeline.read_text())
    return {
        "first_step_s": m["first_step"] - t0,
        "wall_s": t_end - t0,
        "stages": {
            "torchrun_to_rank_script_s": m["script"] - t0,
            "rank_imports_s": m["imported"] - m["script"],
            "data_and_model_s": m["model_built"] - m["imported"],
            "trainer_setup_s": m["train_begin"] - m["model_built"],
            "train_begin_to_first_step_s": m["first_step"] - m["train_begin"],
            "steps_after_first_s": m["last_step"] - m["first_step"],
            "last_step_to_train_end_s": m["train_end"] - m["last_step"],
            "train_end_to_exit_s": t_end - m["train_end"],
        },
    }


def run_gaudi_nb(home: Path, args: argparse.Namespace, pythonpath: Optional[str] = None) -> Dict[str, Any]:
    argv = [str(BIN / "gaudi-nb"), "train", "--model", "tiny-llama", "--dataset", "sample-text", "--devices", str(args.devices), "--batch-size", str(args.batch_size),
            "--sequence-length", str(args.sequence_length), "--max-steps", str(args.steps), "--json"]
    env = {**os.environ, "GAUDI_NB_HOME": str(home)}
    if pythonpath:  # the agent and the ranks inherit it
        env["PYTHONPATH"] = pythonpath + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    t0 = time.time()
    # cwd: `python -m gaudi_nb.agent` puts the caller's folder first on sys.path; from inside a source tree the agent would run that tree
    done = subprocess.run(argv, env=env, cwd=home.parent, capture_output=True, text=True, timeout=900)
    t_end = time.time()
    if done.returncode != 0:
        raise RuntimeError(f"gaudi-nb train failed ({done.returncode}): {done.stdout[-2000:]} {done.stderr[-3000:]}")
    record = json.loads(done.stdout)
    folder = Path(record["run_dir"])
    events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines() if line.strip()]

    def first(kind: str, **match: Any) -> Optional[float]:
        return next((float(e["t"]) for e in events if e["type"] == kind and all(e.get(k) == v for k, v in match.items())), None)

    steps = [float(e["t"]) for e in events if e["type"] == "step"]
    agent_started = (folder / "agent.pid").stat().st_mtime  # written last by the agent as its run_to_end begins (the client writes it first)
    run_start, worker_start, run_end = first("run_start"), first("worker_start", rank=0), first("run_end")
    checkpoint = first("checkpoint")
    if not steps or None in (run_start, worker_start, run_end):
        raise RuntimeError(f"incomplete event stream in {folder}")
    assert run_start is not None and worker_start is not None and run_end is not None
    return {
        "first_step_s": steps[0] - t0,
        "wall_s": t_end - t0,
        "run_id": record["run_id"],
        "stages": {
            "command_to_run_start_s": run_start - t0,  # what gaudi-nb adds before its launcher starts (plain: torchrun starts at 0)
            "client_to_agent_running_s": agent_started - t0,  # client imports + spec + store + agent process start and imports
            "agent_to_run_start_s": run_start - agent_started,  # accelerator detection, launch plan, exporter, trainer pick
            "run_start_to_worker_start_s": worker_start - run_start,  # torchrun, rank imports, data and model
            "worker_start_to_first_step_s": steps[0] - worker_start,
            "steps_after_first_s": steps[-1] - steps[0],
            "last_step_to_checkpoint_s": (checkpoint - steps[-1]) if checkpoint else None,  # the final checkpoint
            "checkpoint_to_run_end_s": run_end - (checkpoint or steps[-1]),  # ranks and torchrun exit, the agent notices
            "run_end_to_client_exit_s": t_end - run_end,  # the client's poll, record, exit
        },
    }


def median_of(samples: List[Dict[str, Any]], key: str) -> Optional[float]:
    values = [s[key] for s in samples if s.get(key) is not None]
    return round(statistics.median(values), 3) if values else None


def summarise(samples: List[Dict[str, Any]]) -> Dict[str, Any]:
    stage_names = list(samples[0]["stages"]) if samples else []
    return {
        "first_step_s": median_of(samples, "first_step_s"),
        "wall_s": median_of(samples, "wall_s"),
        "first_step_all": [round(s["first_step_s"], 2) for s in samples],
        "wall_all": [round(s["wall_s"], 2) for s in samples],
        "stages_median": {name: median_of([s["stages"] for s in samples], name) for name in stage_names},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions of each arm (interleaved)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of each arm first (tokenizer caches, file cache)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--sequence-length", type=int, default=128)
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL=DIR",
                        help="also run gaudi-nb from the source tree DIR (PYTHONPATH), in the same interleaving: compare a change side by side (repeatable)")
    parser.add_argument("--plain-rank", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--timeline", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_rank:
        plain_rank(args)
        return
    variants: List[Tuple[str, Optional[str]]] = [("gaudi_nb", None)] + [(v.split("=", 1)[0], str(Path(v.split("=", 1)[1]).resolve())) for v in args.variant]
    arms = ["plain"] + [label for label, _ in variants]
    source = dict(variants)

    samples: Dict[str, List[Dict[str, Any]]] = {arm: [] for arm in arms}
    failures: List[str] = []
    with tempfile.TemporaryDirectory(prefix="gaudi-nb-startup-") as tmp:
        work = Path(tmp)

        def run(arm: str, index: int) -> Dict[str, Any]:
            if arm == "plain":
                return run_plain(work, index, args)
            return run_gaudi_nb(work / f"home-{arm}", args, pythonpath=source[arm])

        for i in range(args.warmup):
            for arm in arms:
                run(arm, -1 - i)
        for i in range(args.reps):
            for arm in arms[i % len(arms) :] + arms[: i % len(arms)]:  # rotate the order: drift hits every arm alike
                for _attempt in range(2):  # a shared machine may fail a run for its own reasons: one retry, counted
                    try:
                        samples[arm].append(run(arm, i))
                        break
                    except RuntimeError as exc:
                        failures.append(f"rep {i} {arm}: {str(exc)[-300:]}")
                else:
                    raise RuntimeError(f"{arm} failed twice: {failures[-1]}")
                print(f"rep {i} {arm}: first step {samples[arm][-1]['first_step_s']:.2f} s, wall {samples[arm][-1]['wall_s']:.2f} s", file=sys.stderr)
    summary = {arm: summarise(samples[arm]) for arm in arms}
    p = summary["plain"]
    result: Dict[str, Any] = {
        "benchmark": "training start-up: plain transformers Trainer under torchrun vs gaudi-nb train",
        "setup": {"model": "tiny-llama", "dataset": "sample-text", "devices": args.devices, "batch_size": args.batch_size, "sequence_length": args.sequence_length, "max_steps": args.steps,
                  "reps": args.reps, "cpus": os.cpu_count(), "accelerator": "as detected (cpu here)", "variants": {label: path or "installed" for label, path in variants}},
        **summary,
    }
    for label, _ in variants:
        g = summary[label]
        first_diff = round(g["first_step_s"] - p["first_step_s"], 3)
        wall_diff = round(g["wall_s"] - p["wall_s"], 3)
        result[f"{label}_vs_plain"] = {"first_step_diff_s": first_diff, "wall_diff_s": wall_diff, "goal_met": first_diff <= 1.0 and wall_diff <= 2.0}
    result["goal"] = {"first_step_within_s": 1.0, "wall_within_s": 2.0}
    result["retried_failures"] = failures
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
