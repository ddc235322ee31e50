"""Remote start-up: the same tiny run on this machine and on one node attached over SSH (loopback). Prints JSON.

Both arms start the same run through `gaudi_nb.train()` in this process: a torch-free script
that reports three steps under the launcher (one rank), so what differs between the arms is
what a remote run adds: the preflight, the files sent, the agent started over SSH, and the
events mirrored back. The node is a real OpenSSH server on 127.0.0.1 (tests/sshd.py) whose
sessions run this machine's Python, attached with --python (nothing to install).

Measured for both, in seconds from the moment train() is called:
  returned_s    train() returned (the run is launched)
  agent_s       the agent's run_start (it runs on the node; what follows is the same for both arms)
  first_step_s  the first `step` event's own time (written by rank 0 on the node)
  seen_s        the first step is in this client's store (what a panel or `run.wait()` sees)
  done_s        the run's run_end is in this client's store
Arms alternate (local, remote, remote, local, ...) after one untimed warm-up each; the
figures are medians, and `remote_minus_local` is the difference of the medians. On a busy
machine the ranks' start (torch, the launcher) varies by seconds from run to run; agent_s and
seen_s - first_step_s are what the remote path adds, so `remote_overhead_s` (the difference in
agent_s plus the difference in how long a step takes to be seen) is the steadier figure.

    python benchmarks/remote_startup.py            # 5 repetitions
    python benchmarks/remote_startup.py --reps 3 --steps 3

Goal (issue 18, point 11): a remote run's first step arrives within 2 s of a local one's.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the test suite's real sshd

SCRIPT = """
from gaudi_nb.worker.script import init_distributed, report

init_distributed()
for step in range(1, {steps} + 1):
    report(step=step, loss=1.0, tokens=1, samples=1)
"""


def one_run(target: str, script: Path, poll_s: float = 0.02) -> Dict[str, float]:
    import gaudi_nb

    started = time.time()
    run = gaudi_nb.train(target=target, script=str(script), devices=1, max_steps=3)
    returned = time.time()
    seen = None
    while True:
        record = run.record()
        now = time.time()
        if seen is None and record["steps_completed"] >= 1:
            seen = now
        if record["status"] in ("succeeded", "failed", "stopped", "lost", "budget_exceeded"):
            break
        if now - started > 300:
            raise TimeoutError(f"run {run.run_id} on {target} still {record['status']} after 300 s")
        time.sleep(poll_s)
    if record["status"] != "succeeded":
        raise RuntimeError(f"run {run.run_id} on {target} ended {record['status']}: {record['exit']}")
    steps = run.events(types=["step"])
    (run_start,) = run.events(types=["run_start"])
    return {
        "returned_s": round(returned - started, 3),
        "agent_s": round(float(run_start["t"]) - started, 3),
        "first_step_s": round(float(steps[0]["t"]) - started, 3),
        "seen_s": round((seen or now) - started, 3),
        "done_s": round(now - started, 3),
    }


def medians(samples: List[Dict[str, float]]) -> Dict[str, float]:
    return {key: round(statistics.median(s[key] for s in samples), 3) for key in samples[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()

    import sshd as sshd_module

    why = sshd_module.available()
    if why:
        raise SystemExit(f"cannot run the remote arm: {why}")
    folder = Path(tempfile.mkdtemp(prefix="gaudi_nb-remote-startup-"))
    os.environ["GAUDI_NB_HOME"] = str(folder / "client_gaudi_home")
    server = sshd_module.Sshd(folder / "sshd").start()
    os.environ["HOME"] = str(server.client_home(folder / "client_home"))
    os.environ.pop("SSH_AUTH_SOCK", None)
    script = folder / "steps.py"
    script.write_text(SCRIPT.format(steps=args.steps))
    try:
        import gaudi_nb

        attach_started = time.time()
        gaudi_nb.attach(server.url, name="loop", python=sys.executable)
        attach_s = time.time() - attach_started
        one_run("local", script)  # warm-up: file caches, the tokenizer-free script path
        one_run("loop", script)
        results: Dict[str, List[Dict[str, float]]] = {"local": [], "loop": []}
        for rep in range(args.reps):
            order = ("local", "loop") if rep % 2 == 0 else ("loop", "local")
            for target in order:
                results[target].append(one_run(target, script))
        local, remote = medians(results["local"]), medians(results["loop"])
        print(json.dumps({
            "benchmark": "remote_startup",
            "reps": args.reps,
            "steps": args.steps,
            "cpus": os.cpu_count(),
            "attach_s": round(attach_s, 3),
            "local": local,
            "remote": remote,
            "remote_minus_local": {key: round(remote[key] - local[key], 3) for key in local},
            "remote_overhead_s": round((remote["agent_s"] - local["agent_s"]) + (remote["seen_s"] - remote["first_step_s"]) - (local["seen_s"] - local["first_step_s"]), 3),
            "samples": results,
        }, indent=1))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
