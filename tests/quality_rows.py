"""Recorded predictions made up in bulk, for the trust loop's tests and benchmark: the
rows a node would have after months of service (studies, predictions with their case
profiles, report-derived labels, comparisons with reference SEGs, radiologists'
feedback), written straight into a real node database. Each case is planned by the
caller, so the figures the node computes from them are known."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, insert, select

from storage.db import writing
from storage.models import Feedback, PredictionRecord, ReferenceLabel, SegmentComparison, Study

FINDING = "lesion"
SEGMENT = "Lesion"
#: What a made-up model declares (as the inference step records it).
OUTPUTS: dict[str, Any] = {
    "segments": [{"label": 1, "name": SEGMENT, "category": {"value": "49755003", "scheme": "SCT",
                                                           "meaning": "Morphologically Altered Structure"},
                  "type": {"value": "52988006", "scheme": "SCT", "meaning": "Lesion"}, "laterality": None}],
    "measurements": [{"name": "lesion volume", "concept": {"value": "118565006", "scheme": "SCT", "meaning": "Volume"},
                      "unit": {"value": "mL", "scheme": "UCUM", "meaning": "milliliter"}, "segment": 1}],
    "findings": [{"name": FINDING, "concept": {"value": "52988006", "scheme": "SCT", "meaning": "Lesion"}}],
    "detections": [], "maps": [],
}


@dataclass
class PlannedCase:
    created_at: float
    profile: dict[str, Any]
    #: The model's call (None: indeterminate) and score.
    called: bool | None
    score: float
    #: The reference standard from a report (None: no label for this case).
    truth: bool | None = None
    #: (Dice, model mL, reference mL) against a reference SEG, when there is one.
    comparison: tuple[float, float, float] | None = None
    #: A radiologist's verdict on the finding ("agree", "disagree"), with who and why.
    feedback: tuple[str, str, str] | None = None
    volume_ml: float = 10.0
    shadow: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def profile(manufacturer: str = "Siemens", kernel: str = "B30f", thickness_band: str = "<=1.5 mm",
            sex: str = "F", age_band: str = "40-64", department: str = "Emergency", mean_hu: float = -700.0,
            contrast: str = "without") -> dict[str, Any]:
    return {"manufacturer": manufacturer, "scanner": f"{manufacturer} CT", "kernel": kernel,
            "kernel_class": "smooth", "slice_thickness_mm": 1.0, "thickness_band": thickness_band,
            "pixel_spacing_mm": 0.7, "contrast": contrast, "sex": sex, "age_band": age_band,
            "department": department,
            "intensity": {"mean": mean_hu, "p5": mean_hu - 250, "p50": mean_hu, "p95": mean_hu + 600}}


def record_cases(engine: Engine, model: str, cases: Iterable[PlannedCase], version: str = "1.0",
                 route: str = "main", chunk: int = 5000) -> int:
    """Write the cases as studies with one current prediction each; how many."""
    with engine.connect() as conn:
        start = int(conn.execute(select(Study.id).order_by(Study.id.desc()).limit(1)).scalar() or 0)
    written = 0
    batch: list[PlannedCase] = []

    def flush(items: list[PlannedCase], first: int) -> None:
        now = datetime.now(UTC)
        studies, predictions, labels, comparisons, feedback = [], [], [], [], []
        for offset, case in enumerate(items):
            number = first + offset
            uid = f"1.2.826.0.1.3680043.10.1234.9{number}"
            studies.append({"id": number, "study_instance_uid": uid, "accession_number": f"Q{number}",
                            "state": "done", "first_received_at": now, "last_received_at": now,
                            "results_version": 1, "priority": "routine"})
            called = case.called
            predictions.append({
                "id": number, "study_id": number, "results_version": 1, "model": model, "model_version": version,
                "route": route, "series_instance_uid": uid + ".1", "device": "cpu", "outputs": OUTPUTS,
                "measurements": [{"name": "lesion volume", "value": case.volume_ml, "unit": "mL", "reliable": True,
                                  "note": ""}],
                "findings": [{"name": FINDING, "score": case.score, "present": bool(called),
                              "assessment": "indeterminate" if called is None else
                              ("present" if called else "absent"),
                              "reason": "not judged" if called is None else ""}],
                "detections": [], "provenance": {}, "shadow": case.shadow, "labelmap_path": None,
                "load_seconds": 0.1, "inference_seconds": 1.0, "created_at": case.created_at,
                "case_profile": case.profile})
            if case.truth is not None:
                labels.append({"case_key": f"accession:Q{number}", "finding": FINDING, "present": case.truth,
                               "source": "csv", "detail": "generated", "recorded_at": time.time()})
            if case.comparison is not None:
                dice, predicted, reference = case.comparison
                comparisons.append({"prediction_id": number, "segment": SEGMENT,
                                    "reference_sop_instance_uid": uid + ".900", "reference_segment": SEGMENT,
                                    "source": "seg", "dice": dice, "hd95_mm": 2.0, "predicted_ml": predicted,
                                    "reference_ml": reference, "recorded_at": case.created_at})
            if case.feedback is not None:
                verdict, user, reason = case.feedback
                feedback.append({"prediction_id": number, "target_kind": "finding", "target": FINDING,
                                 "verdict": verdict, "reason": reason, "user": user, "role": "radiologist",
                                 "at": case.created_at + 3600})
        with writing(engine) as conn:
            conn.execute(insert(Study), studies)
            conn.execute(insert(PredictionRecord), predictions)
            for table, rows in ((ReferenceLabel, labels), (SegmentComparison, comparisons), (Feedback, feedback)):
                if rows:
                    conn.execute(insert(table), rows)

    for case in cases:
        batch.append(case)
        if len(batch) >= chunk:
            flush(batch, start + written + 1)
            written += len(batch)
            batch = []
    if batch:
        flush(batch, start + written + 1)
        written += len(batch)
    return written
