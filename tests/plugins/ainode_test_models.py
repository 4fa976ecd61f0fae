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
    Detection,
    DetectionSpec,
    DeviceNeeds,
    Finding,
    FindingSpec,
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


class DenseBlobDetector:
    """Finds one "lung nodule" at the centre of the voxels above 0 HU, the size of
    their extent along each patient axis, with score 0.9: a detection whose right
    answer a test can compute from the source images."""

    name = "blob-detector"
    version = "1"
    accepts = Accepts(modalities=("CT",), min_slices=3)
    device_needs = DeviceNeeds(gpu="none")
    outputs = Outputs(detections=(DetectionSpec("lung nodule", Code("27925004", "SCT", "Nodule")),))

    def load(self, device: str) -> None:
        pass

    def predict(self, volume):  # noqa: ANN001, ANN201
        k, j, i = np.nonzero(volume.array > 0)
        affine = volume.affine_lps()
        points = (affine @ np.stack([i, j, k, np.ones_like(i)]).astype(float))[:3]
        centre = tuple(float(v) for v in points.mean(axis=1))
        extent = tuple(float(v) + 0.5 for v in np.ptp(points, axis=1))
        return Prediction(labelmap=None, detections=[Detection("lung nodule", centre, 0.9, extent)])


class HangingModel:
    """Never returns from predict (as a model stuck in a deadlock would)."""

    name = "hangs"
    version = "1"
    accepts = Accepts(modalities=("CT",), min_slices=3)
    device_needs = DeviceNeeds(gpu="none")
    outputs = Outputs()

    def load(self, device: str) -> None:
        pass

    def predict(self, volume):  # noqa: ANN001, ANN201
        import time

        while True:
            time.sleep(1)


class LesionFinder:
    """Segments a "lesion" as the voxels above 100 HU and reports it present when there
    are any, with the score max HU / 300 (capped at 1): a model whose mistakes a test
    can plan. A lesion imaged at 90 HU is missed; one with a fainter rim is undersized;
    a single bright voxel is a false positive."""

    name = "lesion-finder"
    version = "1"
    accepts = Accepts(modalities=("CT",), min_slices=3)
    device_needs = DeviceNeeds(gpu="none")
    outputs = Outputs(
        segments=(SegmentSpec(1, "Lesion", Code("49755003", "SCT", "Morphologically Altered Structure"),
                              Code("52988006", "SCT", "Lesion")),),
        findings=(FindingSpec("lesion", Code("52988006", "SCT", "Lesion")),),
    )

    def load(self, device: str) -> None:
        pass

    def predict(self, volume):  # noqa: ANN001, ANN201
        mask = volume.array > 100
        score = float(min(1.0, max(0.0, float(volume.array.max()) / 300.0)))
        return Prediction(labelmap=mask.astype(np.uint8), findings=[Finding("lesion", score, bool(mask.any()))])
