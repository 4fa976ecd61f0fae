"""A model plugin registered through a real entry point, for the tests only: it kills
its worker process the first time it runs, then works."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np

from ai.protocol import (
    Accepts,
    Code,
    DeviceNeeds,
    Measurement,
    MeasurementSpec,
    Outputs,
    Prediction,
    SegmentSpec,
)

STRUCTURE = Code("91723000", "SCT", "Anatomical Structure")


class CrashOnceModel:
    name = "crash-once"
    version = "1"
    accepts = Accepts(modalities=("CT",), min_slices=3)
    device_needs = DeviceNeeds(gpu="none")
    outputs = Outputs(
        segments=(SegmentSpec(1, "Dense", STRUCTURE, Code("85756007", "SCT", "Tissue")),),
        measurements=(MeasurementSpec("dense volume", Code("118565006", "SCT", "Volume"),
                                      Code("mL", "UCUM", "milliliter"), 1),),
    )

    def __init__(self, marker_dir: str) -> None:
        self.marker = Path(marker_dir) / "crashed-once"

    def load(self, device: str) -> None:
        pass

    def predict(self, volume):  # noqa: ANN001, ANN201
        if not self.marker.exists():
            self.marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)  # as an out-of-memory kill would
        import torch

        mask = volume.array > -500
        return Prediction(labelmap=mask.astype(np.uint8),
                          measurements=[Measurement("dense volume", float(mask.sum()) * volume.voxel_volume_ml)],
                          provenance={"cpu_threads": torch.get_num_threads()})
