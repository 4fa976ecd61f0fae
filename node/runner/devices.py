"""Which devices the inference workers run on, decided without importing torch (the
main process stays small; each worker checks its device with torch when it starts)."""

from __future__ import annotations

import os
from pathlib import Path

from config.settings import Settings


def cuda_device_count_hint() -> int:
    """How many CUDA devices this machine shows, without importing torch: the NVIDIA
    driver's list, narrowed by ``CUDA_VISIBLE_DEVICES`` (the workers check with torch)."""
    gpus = Path("/proc/driver/nvidia/gpus")
    count = sum(1 for _ in gpus.iterdir()) if gpus.is_dir() else 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = []
        for item in visible.split(","):
            if not item.strip() or item.strip().startswith("-"):
                break  # CUDA stops at the first invalid id
            ids.append(item)
        count = min(count, len(ids))
    return count


def inference_devices(settings: Settings) -> list[tuple[str, bool]]:
    """The devices to start inference workers on, each with whether it was configured
    (a configured device that is absent stops the node; a detected one falls back)."""
    if settings.inference_devices:
        return [(d, True) for d in settings.inference_devices]
    return [(f"cuda:{i}", False) for i in range(cuda_device_count_hint())] or [("cpu", False)]
