"""A key image for the study page: the label map's outlines over the source slice, in
the model's display window, with the values and their reliability (as the SC key
images draw them), or one of the model's explanation maps over the slice where it
weighs most, as PNG. Made on request from what the node keeps; nothing stored."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image
from pydicom import dcmread
from sqlalchemy import Engine, select

from ai.encoders.sc import (
    draw_explanation,
    draw_key_image,
    explanation_lines,
    explanation_slice,
    key_slices,
    lesion_marks,
    result_lines,
    window_of,
)
from ai.encoders.sr import reported_detections
from ai.labelmap import LabelMap
from ai.protocol import Detection, Finding, MapKind, Measurement, outputs_from_dict
from node.pipeline.encoding import slice_reader
from storage.files import FileStore
from storage.models import Instance, PredictionRecord, Study

_MIN_SIZE = 512  # pixels on the long side of a key image


def best_slice(labels: np.ndarray, wanted: list[int]) -> int:
    """Of the slices where each segment is largest, the one showing the most segments
    (then the most labelled pixels): one image that shows the whole result."""
    candidates = key_slices(labels, wanted) or [labels.shape[0] // 2]

    def score(index: int) -> tuple[int, int]:
        plane = labels[index]
        return len(set(np.unique(plane).tolist()) - {0}), int((plane > 0).sum())

    return max(candidates, key=score)


def key_image_png(engine: Engine, store: FileStore, study_instance_uid: str, prediction_id: int,
                  slice_index: int | None = None, explanation: str | None = None) -> bytes | None:
    """The PNG (of the explanation map named ``explanation``, if given), or ``None``
    when the prediction (of that study) has no label map or no such map, or its
    source images are gone."""
    with engine.connect() as conn:
        record = conn.execute(
            select(PredictionRecord.outputs, PredictionRecord.measurements, PredictionRecord.findings,
                   PredictionRecord.detections, PredictionRecord.labelmap_path, PredictionRecord.model,
                   PredictionRecord.model_version)
            .join(Study, PredictionRecord.study_id == Study.id)
            .where(PredictionRecord.id == prediction_id, Study.study_instance_uid == study_instance_uid)
        ).one_or_none()
    if record is None or record.labelmap_path is None:
        return None
    labelmap = LabelMap.from_npz(store.absolute(record.labelmap_path))
    outputs = outputs_from_dict(record.outputs)
    labels = labelmap.array
    spec = None
    if explanation is not None:
        spec = next((m for m in outputs.maps if m.name == explanation and m.kind is MapKind.EXPLANATION), None)
        if spec is None or spec.name not in labelmap.maps:
            return None
    lesions = [d for d, _ in reported_detections(outputs, [Detection.from_json(d) for d in record.detections or ()])]
    marks = lesion_marks(labelmap, lesions)
    if slice_index is not None:
        index = max(0, min(labels.shape[0] - 1, slice_index))
    elif spec is not None:
        index = explanation_slice(labelmap.maps[spec.name])
    elif not labels.any() and marks:  # a detector's result: the most certain lesion's slice
        index = min(marks, key=lambda k: min(m.number for m in marks[k]))
    else:
        index = best_slice(labels, [s.label for s in outputs.segments])
    uid = labelmap.sop_instance_uids[index]
    with engine.connect() as conn:
        relative = conn.execute(select(Instance.path).where(Instance.sop_instance_uid == uid)).scalar_one_or_none()
    if relative is None or not store.absolute(relative).exists():
        return None
    path = store.absolute(relative)
    values = slice_reader({uid: path}, labelmap)(index)
    window = outputs.display_window or window_of(dcmread(path, stop_before_pixels=True), values)
    measurements = [Measurement.from_json(m) for m in record.measurements]
    findings = [Finding.from_json(f) for f in record.findings]
    shown = sorted(set(np.unique(labels[index]).tolist()) - {0})
    caption = f"{record.model} {record.model_version} - slice {index + 1}/{labels.shape[0]}"
    plane = labels[index]
    factor = max(1, -(-_MIN_SIZE // max(plane.shape)))  # small matrices are enlarged for the text
    if factor > 1:
        values = values.repeat(factor, 0).repeat(factor, 1)
        plane = plane.repeat(factor, 0).repeat(factor, 1)
    if spec is not None:
        fractions = labelmap.fraction(spec.name)[index]
        if factor > 1:
            fractions = fractions.repeat(factor, 0).repeat(factor, 1)
        rgb = draw_explanation(values, fractions, window, caption, explanation_lines(spec, findings))
        return _png(rgb)
    scaled = [dataclasses.replace(m, box=tuple(v * factor for v in m.box)) for m in marks.get(index, ())]
    rgb = draw_key_image(values, plane, outputs, window, caption,
                         result_lines(outputs, measurements, findings, shown), scaled)
    return _png(rgb)


def _png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()
