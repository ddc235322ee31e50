"""Intel Gaudi through habana_frameworks (from Intel's images; not on PyPI)."""
from __future__ import annotations

import importlib.util
import os
from typing import Dict


class HPU:
    name = "hpu"

    def available(self) -> bool:
        if importlib.util.find_spec("habana_frameworks") is None:
            return False
        try:
            import habana_frameworks.torch.hpu as hthpu  # noqa: F401

            return bool(hthpu.is_available())
        except Exception:
            return False

    def device_string(self, local_rank: int) -> str:
        return "hpu"  # HABANA_VISIBLE_MODULES maps each rank to its own card

    def default_precision(self) -> str:
        return "bf16"

    def distributed_backend(self) -> str:
        return "hccl"

    def mark_step(self) -> None:
        # In lazy mode the graph runs only at a mark_step; eager mode needs none.
        # Unset means eager: Intel's default since Gaudi software 1.21.
        if os.environ.get("PT_HPU_LAZY_MODE", "0") == "1":
            import habana_frameworks.torch.core as htcore

            htcore.mark_step()

    def memory_stats(self) -> Dict[str, int]:
        # Gaudi pre-allocates device memory, so only the in-process allocator tells what is used.
        import habana_frameworks.torch.hpu as hthpu

        stats = hthpu.memory_stats()
        return {
            "in_use_bytes": int(stats.get("InUse", 0)),
            "max_in_use_bytes": int(stats.get("MaxInUse", 0)),
            "limit_bytes": int(stats.get("Limit", 0)),
        }

    def count(self) -> int:
        import habana_frameworks.torch.hpu as hthpu

        return hthpu.device_count()
