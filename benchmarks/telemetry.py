"""How much CPU the host telemetry sampler costs at 1 Hz, as a percentage of one core; prints JSON."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import psutil

from gaudi_nb.telemetry import HostSource, parse_hlsmi_csv

SAMPLES = 50
GOAL_PCT = 0.5
# A rank-like process: a parent with one worker child (like a dataloader), both mostly idle,
# so the measurement is the sampler's own cost, not contention for the machine's cores.
RANK = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); time.sleep(120)"


def main() -> None:
    ranks = [subprocess.Popen([sys.executable, "-c", RANK]) for _ in range(2)]
    try:
        deadline = time.time() + 10
        while time.time() < deadline and not all(psutil.Process(r.pid).children() for r in ranks):
            time.sleep(0.05)
        source = HostSource({rank: proc.pid for rank, proc in enumerate(ranks)})
        source.sample()  # the first sample primes psutil's CPU deltas; not counted

        cpu0, wall0 = time.process_time(), time.perf_counter()
        for _ in range(SAMPLES):
            sample = source.sample()
        cpu_s, wall_s = time.process_time() - cpu0, time.perf_counter() - wall0

        fixture = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "hlsmi_nounits.csv")
        text = open(fixture).read()
        cpu1 = time.process_time()
        for _ in range(SAMPLES):
            parse_hlsmi_csv(text)
        parse_cpu_s = time.process_time() - cpu1

        per_sample = cpu_s / SAMPLES
        percent = per_sample * 1.0 * 100  # 1 sample per second
        print(
            json.dumps(
                {
                    "benchmark": "telemetry.host_sampler",
                    "samples": SAMPLES,
                    "rank_processes": len(ranks),
                    "processes_watched": sum(1 + len(psutil.Process(r.pid).children()) for r in ranks),
                    "devices_in_last_sample": len(sample.devices),
                    "cpu_ms_per_sample": round(per_sample * 1000, 3),
                    "wall_ms_per_sample": round(wall_s / SAMPLES * 1000, 3),
                    "cpu_percent_of_one_core_at_1hz": round(percent, 4),
                    "goal_percent": GOAL_PCT,
                    "meets_goal": percent < GOAL_PCT,
                    "hlsmi_parse_ms_per_sample_8_devices": round(parse_cpu_s / SAMPLES * 1000, 3),
                    "cpu_count": os.cpu_count(),
                },
                indent=2,
            )
        )
    finally:
        for proc in ranks:
            try:
                for child in psutil.Process(proc.pid).children(recursive=True):
                    child.kill()
            except psutil.NoSuchProcess:
                pass
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
