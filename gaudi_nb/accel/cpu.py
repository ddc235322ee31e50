"""The CPU: always present; ranks are processes, memory is the process's resident set."""
from __future__ import annotations

import os
from functools import lru_cache
from typing import Dict


@lru_cache(maxsize=1)
def _this_process():  # type: ignore[no-untyped-def]
    import psutil

    return psutil.Process(os.getpid())


class CPU:
    name = "cpu"

    def available(self) -> bool:
        return True

    def device_string(self, local_rank: int) -> str:
        return "cpu"

    def default_precision(self) -> str:
        # bf16 autocast on most CPUs is slower than fp32 and changes losses; fp32 is the honest default.
        return "fp32"

    def distributed_backend(self) -> str:
        return "gloo"

    def mark_step(self) -> None:
        return None

    def memory_stats(self) -> Dict[str, int]:
        return {"in_use_bytes": int(_this_process().memory_info().rss)}

    def count(self) -> int:
        return os.cpu_count() or 1
