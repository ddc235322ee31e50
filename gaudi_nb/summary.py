"""A run's record, folded from its events: the one place where views get status, metrics and cost."""
from __future__ import annotations

import copy
from typing import Any, Dict, Iterable, List, Optional

from .cost import meter
from .cost import mfu as mfu_math
from .fold import Event, Fold, run_spend


def empty_summary(run_id: str) -> Dict[str, Any]:
    return {
        "run_id": run_id,
        "name": None,
        "status": "pending",
        "spec": None,
        "target": None,
        "node": None,
        "run_dir": None,
        "started_at": None,
        "ended_at": None,
        "last_event_at": None,
        "accelerator": None,
        "device_count": None,
        "trainer": None,
        "trainer_support": None,  # the trainer stack's support state (gaudi_stack.trainer_support)
        "precision": None,
        "execution_mode": None,  # eager | eager+compile | lazy (HPU)
        "launcher": None,
        "steps_completed": 0,
        "max_steps": None,
        "metrics": {
            "first_loss": None,
            "final_loss": None,
            "eval_loss": None,
            "tokens_per_second": None,
            "samples_per_second": None,
            "step_time_s": None,
            "tokens_seen": 0,
            # model FLOPs utilization: 6 × parameters × tokens/s against the device's catalog peak
            "tflops": None,
            "mfu": None,
            "peak_tflops_per_device": None,
            "peak_source": None,
        },
        "parameters": {"total": None, "trainable": None},  # trainable < total for a LoRA run
        "lora": None,  # rank, alpha, dropout, target_modules of a LoRA run
        "device_name": None,  # the device model as its runtime names it (GAUDI3)
        "trackers": {},  # --report-to: tracker name → its run id and address
        "cost": {
            "usd": None,
            "price_per_hour": None,
            "price_source": None,
            "nodes": 1,
            "usd_per_million_tokens": None,
            "projected_usd": None,
            "budget_usd": None,
            "budget_left_usd": None,
            "elapsed_s": None,
        },
        # per_device, global, how (given | searched | cached) and the search's trials and seconds (--batch-size auto)
        "batch_size": None,
        "learning_rate": None,  # base (--learning-rate), scaled (what the run used), scaling, base_batch_size (--lr-scaling)
        "telemetry_samples": 0,
        "checkpoints": [],
        "exit": None,
        # while a scheduler holds the run: why, in full and in a few words as every status line says it
        # (Resources, Insufficient habana.ai/gaudi), and since when; cleared once the run is placed
        "queued": None,
        "slurm": None,  # a run on a Slurm cluster: job_id, partition, nodes
        "batch": None,  # batch runs (gaudi_nb.batch): notebook, parameters, cells, results
        "attempt": 1,  # a restart after a crash, or a resume, starts the next attempt of the same run
        "restarts": [],  # one entry per restart event: attempt, cause, from_step, reason
        "bad_lines": None,  # lines of events.jsonl that broke the contract, kept aside: count, and the first's offset, error and text
        # running sums for steady-state throughput (warmup steps left out)
        "_measured_tokens": 0,
        "_measured_samples": 0,
        "_measured_seconds": 0.0,
        # counting each step once across attempts: the highest step whose tokens are counted, and
        # what each step after the last checkpoint added (only those can be replayed by a restart)
        "_counted_step": 0,
        "_forgotten_step": 0,  # the newest step dropped from _replayable by its size limit
        "_first_loss_step": None,
        "_final_loss_step": None,  # and the loss a restart goes back to: [step, loss] at the last checkpoint
        "_checkpoint_loss": None,
        "_replayable": {},
    }


# Steps remembered for replacement when no checkpoint bounds them (a run without --save-steps), so the
# record stays small; a replayed step older than these is still counted once, only its throughput sample stays.
# The record is written at every ingest (for a fleet, every run every tick): 100 steps keep it near 3 kB,
# where 1,000 made a long run's 35 kB and its write most of the tick.
REPLAYABLE_STEPS = 100


def fold(summary: Dict[str, Any], events: Iterable[Dict[str, Any]], *, in_place: bool = False) -> Dict[str, Any]:
    """Apply events to a summary (returns a new dict; the input is not changed unless in_place,
    which the store uses for a summary it has just read: the copy was most of an ingest's time)."""
    s = summary if in_place else copy.deepcopy(summary)
    RecordFold(s).apply(events)
    _derive(s)
    return s


class RecordFold(Fold):
    """The run record as a fold over a plain dict (the store keeps it as JSON between ingests): the
    attempt and the run's step live in the dict, so a fold can go on from a record read back."""

    def __init__(self, summary: Dict[str, Any]) -> None:
        self.summary = summary

    @property  # type: ignore[override]
    def attempt(self) -> int:
        return self.summary["attempt"]  # type: ignore[no-any-return]

    @attempt.setter
    def attempt(self, value: int) -> None:
        self.summary["attempt"] = value

    @property  # type: ignore[override]
    def step(self) -> int:
        return self.summary["steps_completed"]  # type: ignore[no-any-return]

    @step.setter
    def step(self, value: int) -> None:
        self.summary["steps_completed"] = value

    def derive(self) -> None:
        _derive(self.summary)

    def seen(self, e: Event) -> None:
        s = self.summary
        s["last_event_at"] = e.get("t", s["last_event_at"])

    def on_run_start(self, e: Event) -> None:
        s = self.summary
        spec = e.get("spec") or {}
        s.update(
            # the agent is up; the run is running once a rank has started (a batch notebook runs at once)
            status="running" if e.get("kind") == "batch" else "starting",
            spec=spec,
            name=spec.get("name"),
            target=spec.get("target"),
            node=e.get("node"),
            run_dir=e.get("run_dir"),
            started_at=e.get("t"),
            accelerator=e.get("accelerator"),
            launcher=e.get("launcher"),
            max_steps=spec.get("max_steps"),
        )
        s["trainer"] = e.get("trainer")
        s["queued"] = None  # placed: the wait is over
        if e.get("kind") == "batch":
            s["batch"] = dict(
                _empty_batch(),
                notebook=e.get("notebook") or spec.get("notebook"),
                parameters=spec.get("parameters") or {},
                cells_total=len(e.get("cells") or []) or None,
                output_path=e.get("output_path"),
                manifest_path=e.get("manifest_path"),
            )
        s["cost"].update(price_per_hour=e.get("price_per_hour"), price_source=e.get("price_source"), nodes=spec.get("nodes", 1), budget_usd=spec.get("budget_usd"))

    def on_worker_start(self, e: Event) -> None:
        s = self.summary
        if s["status"] == "starting":
            s["status"] = "running"
        if e.get("rank") == 0:
            s.update(trainer=e.get("trainer"), precision=e.get("precision"), accelerator=e.get("accelerator"), device_count=e.get("world_size"), execution_mode=e.get("execution_mode"),
                     trainer_support=e.get("trainer_support"))
            _apply_batch_and_rate(s, e)
            _apply_model(s, e)

    def on_step(self, e: Event, step: int, replayed: bool) -> None:
        s = self.summary
        if s["status"] == "starting":  # a script run whose rank 0 started silently
            s["status"] = "running"
        _apply_step(s, e, step)

    def on_eval(self, e: Event) -> None:
        self.summary["metrics"]["eval_loss"] = e.get("eval_loss")

    def on_checkpoint(self, e: Event) -> None:
        s = self.summary
        s["checkpoints"].append({"step": e.get("step"), "path": e.get("path"), "reason": e.get("reason")})
        # steps up to a complete checkpoint are never replayed: forget what they added, and keep the
        # loss a restart from this checkpoint goes back to
        done = int(e.get("step") or 0)
        replayable = s.setdefault("_replayable", {})
        kept = _loss_at(s, done)
        if kept is not None:
            s["_checkpoint_loss"] = kept
        for key in [k for k in replayable if int(k) <= done]:
            del replayable[key]

    def on_restart(self, e: Event, from_step: int) -> None:
        _apply_restart(self.summary, e, from_step)

    def on_batch_size(self, e: Event) -> None:
        s = self.summary
        found = {"per_device": e.get("size"), "how": e.get("how"), "trials": len(e.get("trials") or []), "search_s": e.get("seconds"), "memory_fraction": e.get("memory_fraction")}
        s["batch_size"] = {**(s.get("batch_size") or {}), **found}

    def on_telemetry(self, e: Event) -> None:
        self.summary["telemetry_samples"] += 1

    def on_cost(self, e: Event) -> None:
        _apply_cost(self.summary, e)

    def on_tracker(self, e: Event) -> None:
        self.summary.setdefault("trackers", {})[str(e.get("tracker"))] = {k: e.get(k) for k in ("tracker_run_id", "url", "experiment")}

    def on_cell(self, e: Event) -> None:
        _apply_batch(self.summary, e)

    on_result = on_cell

    def on_stop_requested(self, e: Event) -> None:
        s = self.summary
        if s["status"] in ("starting", "running"):
            s["status"] = "stopping"

    def on_bad_line(self, e: Event) -> None:
        s = self.summary
        bad = s.get("bad_lines") or {"count": 0, "first": {k: e.get(k) for k in ("offset", "error", "text")}}
        bad["count"] += 1
        s["bad_lines"] = bad

    def on_job(self, e: Event) -> None:
        s = self.summary
        if e.get("scheduler") == "slurm":
            s["slurm"] = {"job_id": e.get("job_id"), "partition": e.get("partition"), "nodes": e.get("nodes") or (s["slurm"] or {}).get("nodes") or []}
        if e.get("state") == "PENDING" and s["status"] in ("starting", "running", "stopping"):
            s["status"] = "pending"  # Slurm requeued the job (a preemption, a node failure): it waits for its next start
        elif e.get("state") == "RUNNING" and s["status"] == "pending":
            s["status"] = "starting"
        if e.get("state") == "PENDING" and s["status"] == "pending":
            since = (s["queued"] or {}).get("since") or e.get("t")
            s["queued"] = {"reason": e.get("reason"), "short": e.get("short") or e.get("reason"), "since": since}
        else:  # placed, running or ending: the wait is over
            s["queued"] = None

    def on_run_end(self, e: Event) -> None:
        s = self.summary
        s["queued"] = None
        s["status"] = e.get("status", "failed")
        s["ended_at"] = e.get("t")
        s["exit"] = {k: e.get(k) for k in ("exit_code", "reason", "last_log_lines")}


def _apply_step(s: Dict[str, Any], e: Event, step: int) -> None:
    """Count a step once: a step replayed after a restart replaces the earlier attempt's (its tokens,
    its throughput sample); the loss shown is the newest attempt's, of the newest step that reported one."""
    m = s["metrics"]
    tokens, samples = int(e.get("tokens") or 0), int(e.get("samples") or 0)
    measured = not e.get("warmup") and bool(e.get("step_time_s"))
    seconds = float(e["step_time_s"]) if measured else 0.0
    replayable = s.setdefault("_replayable", {})
    earlier = replayable.pop(str(step), None)
    if earlier is not None:  # [tokens, measured tokens, measured samples, measured seconds, loss] of the replaced step
        m["tokens_seen"] -= earlier[0]
        s["_measured_tokens"] -= earlier[1]
        s["_measured_samples"] -= earlier[2]
        s["_measured_seconds"] -= earlier[3]
    if earlier is not None or step > s.get("_counted_step", 0):
        m["tokens_seen"] += tokens
    s["_counted_step"] = max(s.get("_counted_step", 0), step)
    loss = e.get("loss")
    if loss is not None:
        if m["first_loss"] is None or step <= (s.get("_first_loss_step") or step):
            m["first_loss"] = loss
            s["_first_loss_step"] = step
        m["final_loss"], s["_final_loss_step"] = loss, step
    m["step_time_s"] = e.get("step_time_s")
    if measured:
        s["_measured_tokens"] += tokens
        s["_measured_samples"] += samples
        s["_measured_seconds"] += seconds
    replayable[str(step)] = [tokens, tokens if measured else 0, samples if measured else 0, seconds, loss]
    if len(replayable) > REPLAYABLE_STEPS:
        oldest = min(replayable, key=int)
        del replayable[oldest]
        s["_forgotten_step"] = max(s.get("_forgotten_step", 0), int(oldest))


def _loss_at(s: Dict[str, Any], step: int) -> Optional[List[Any]]:
    """[step, loss] of the newest step at or before `step` that reported a loss, as far as the record still knows it."""
    known = [(int(k), v[4]) for k, v in s.get("_replayable", {}).items() if int(k) <= step and len(v) > 4 and v[4] is not None]
    candidates: List[Any] = [s.get("_checkpoint_loss") or [None, None], [s.get("_final_loss_step"), s["metrics"]["final_loss"]]]
    for at, loss in candidates:
        if at is not None and loss is not None and int(at) <= step:
            known.append((int(at), loss))
    if not known:
        return None
    at, loss = max(known, key=lambda pair: pair[0])
    return [at, loss]


def _apply_model(s: Dict[str, Any], e: Dict[str, Any]) -> None:
    """Rank 0's worker_start: the model's size, its LoRA adapter, and the peak its MFU is measured against."""
    if e.get("parameters") is None:
        return  # a script run's rank does not build the model itself
    s["parameters"] = {"total": e.get("parameters"), "trainable": e.get("trainable_parameters", e.get("parameters"))}
    s["lora"] = e.get("lora")
    s["device_name"] = e.get("device_name")
    peak = mfu_math.peak_for(e.get("device_name"), e.get("precision"))
    s["metrics"].update(peak_tflops_per_device=peak.tflops, peak_source=peak.source)


def _apply_batch_and_rate(s: Dict[str, Any], e: Dict[str, Any]) -> None:
    """Rank 0's worker_start: the batch it trains with (a number, or what --batch-size auto found) and the learning rate."""
    if e.get("batch_size") is None:
        return  # a script run's rank: the script picks both
    found = s.get("batch_size") or {}
    s["batch_size"] = {"how": "given", **found, "per_device": e.get("batch_size"), "global": e.get("global_batch_size")}
    s["learning_rate"] = {"base": e.get("base_learning_rate"), "scaled": e.get("learning_rate"), "scaling": e.get("lr_scaling"), "base_batch_size": e.get("base_batch_size")}


def _apply_restart(s: Dict[str, Any], e: Event, from_step: int) -> None:
    """A new attempt of the run (the fold has set `attempt` and gone back to `from_step`, the last complete
    checkpoint or 0); a resumed run is active again, and its final status will be this attempt's."""
    s.setdefault("restarts", []).append({k: e.get(k) for k in ("attempt", "cause", "from_step", "checkpoint", "reason", "t")})
    # the steps after from_step are lost with the attempt that ran them: uncount them now, so a
    # record read before they are replayed (or if they never are) counts what the run keeps
    m = s["metrics"]
    replayable = s.setdefault("_replayable", {})
    lost = [k for k in replayable if int(k) > from_step]
    if (s.get("_final_loss_step") or 0) > from_step:
        kept = _loss_at(s, from_step)  # the loss shown goes back with the step
        m["final_loss"] = kept[1] if kept else None
    for key in lost:
        earlier = replayable.pop(key)
        m["tokens_seen"] -= earlier[0]
        s["_measured_tokens"] -= earlier[1]
        s["_measured_samples"] -= earlier[2]
        s["_measured_seconds"] -= earlier[3]
    # a forgotten step after from_step stays counted, so its replay must not count it again
    s["_counted_step"] = min(s.get("_counted_step", 0), max(from_step, s.get("_forgotten_step", 0)))
    if (s.get("_first_loss_step") or 0) > from_step:
        m["first_loss"], s["_first_loss_step"] = None, None
    if s["status"] not in ("pending",):
        s["status"] = "starting"  # the agent launches the ranks again; worker_start makes it running
    s["ended_at"] = None
    s["exit"] = None
    if e.get("max_steps"):  # a resume may extend the run
        s["max_steps"] = e["max_steps"]
        if isinstance(s.get("spec"), dict):
            s["spec"]["max_steps"] = e["max_steps"]
    if "budget_usd" in e and e["budget_usd"] is not None:
        s["cost"]["budget_usd"] = e["budget_usd"]
        if isinstance(s.get("spec"), dict):
            s["spec"]["budget_usd"] = e["budget_usd"]


def _apply_cost(s: Dict[str, Any], e: Dict[str, Any]) -> None:
    """Each node's agent meters its own node: the run's spend is the sum of every node's latest
    cost event (unknown if any node's is), its elapsed time the longest."""
    per_node = s.setdefault("_node_costs", {})
    per_node[str(e.get("node"))] = {"usd": e.get("usd"), "elapsed_s": e.get("elapsed_s"), "nodes": e.get("nodes") or 1}
    elapsed = [c["elapsed_s"] for c in per_node.values() if c["elapsed_s"] is not None]
    metered = sum(int(c["nodes"]) for c in per_node.values())
    s["cost"].update(
        usd=run_spend({node: c["usd"] for node, c in per_node.items()}),
        elapsed_s=max(elapsed) if elapsed else None,
        price_per_hour=e.get("price_per_hour"),
        nodes=max(metered, int((s.get("spec") or {}).get("nodes") or 1)),
    )


def _empty_batch() -> Dict[str, Any]:
    return {"notebook": None, "parameters": {}, "cells_total": None, "cells_done": 0, "current_cell": None, "failed_cell": None, "error": None, "output_path": None, "manifest_path": None, "results": {}}


def _apply_batch(s: Dict[str, Any], e: Dict[str, Any]) -> None:
    """`cell` events (phase start/end/error) and `result` events (values a notebook recorded)."""
    b = s.get("batch") or _empty_batch()
    s["batch"] = b
    if e.get("type") == "result":
        b["results"].update(e.get("values") or {})
        return
    phase = e.get("phase")
    if phase == "start":
        b["current_cell"] = e.get("index")
    elif phase == "end":
        b["cells_done"] += 1
        b["current_cell"] = None
    elif phase == "error":
        b["failed_cell"] = e.get("index")
        b["error"] = e.get("error")
        b["current_cell"] = None


def _derive(s: Dict[str, Any]) -> None:
    m, c = s["metrics"], s["cost"]
    if s["_measured_seconds"] > 0:
        m["tokens_per_second"] = s["_measured_tokens"] / s["_measured_seconds"]
        m["samples_per_second"] = s["_measured_samples"] / s["_measured_seconds"]
    total = (s.get("parameters") or {}).get("total")
    m["tflops"] = mfu_math.achieved_tflops(total, m["tokens_per_second"])
    m["mfu"] = mfu_math.mfu(m["tflops"], m.get("peak_tflops_per_device"), s.get("device_count"))
    c["usd_per_million_tokens"] = meter.usd_per_million_tokens(c["price_per_hour"], c["nodes"] or 1, m["tokens_per_second"])
    if c["elapsed_s"] is not None and s["max_steps"]:
        c["projected_usd"] = meter.projected_total(c["usd"], c["elapsed_s"], s["steps_completed"], s["max_steps"])
    c["budget_left_usd"] = meter.budget_left(c["budget_usd"], c["usd"])


def public(summary: Dict[str, Any]) -> Dict[str, Any]:
    """The record users see (CLI --json, API): the summary without running sums."""
    return {k: v for k, v in summary.items() if not k.startswith("_")}

