"""A prediction is checked against what its model declared before it is recorded."""

from __future__ import annotations

import numpy as np
import pytest

from ai.models.ct_chest import OUTPUTS
from ai.protocol import (
    Finding,
    Measurement,
    Prediction,
    PredictionMismatch,
    check_prediction,
    labels_present,
    undeclared_labels,
)

SHAPE = (4, 8, 8)


def _labelmap(*labels: int) -> np.ndarray:
    array = np.zeros(SHAPE, dtype=np.uint8)
    for i, label in enumerate(labels):
        array[i] = label
    return array


def test_a_prediction_within_its_declaration_passes() -> None:
    measured = [Measurement(m.name, 1.0) for m in OUTPUTS.measurements]
    found = [Finding(f.name, 0.25, False) for f in OUTPUTS.findings]
    check_prediction(OUTPUTS, Prediction(_labelmap(1, 2, 3), measured, found), SHAPE)
    check_prediction(OUTPUTS, Prediction(None), SHAPE)  # no label map at all is fine
    check_prediction(OUTPUTS, Prediction(_labelmap(1, 0, 1).astype(bool)), SHAPE)  # a mask is label 1


@pytest.mark.parametrize(("prediction", "message"), [
    (Prediction(np.zeros((3, 8, 8), np.uint8)), r"a label map of shape \(3, 8, 8\) for a volume of \(4, 8, 8\)"),
    (Prediction(np.zeros(SHAPE, np.float32)), "a label map of float32 values"),
    (Prediction(_labelmap(1, 9, 12)), "label\\(s\\) 9, 12 that it does not declare"),
    (Prediction(_labelmap(1, 9, 12).astype(np.int16) * 30), "label\\(s\\) 30, 270, 360 that it does not"),
    (Prediction(None, [Measurement("spleen volume", 1.0)]), "measurement 'spleen volume' that it does not declare"),
    (Prediction(None, [Measurement(OUTPUTS.measurements[0].name, float("nan"))]), "= nan"),
    (Prediction(None, findings=[Finding("pneumothorax", 0.9, True)]), "finding 'pneumothorax' that it does not"),
    (Prediction(None, findings=[Finding(OUTPUTS.findings[0].name, 1.5, True)]), r"score 1.5 \(0..1 expected\)"),
])
def test_a_prediction_beyond_its_declaration_is_refused_with_the_reason(prediction: Prediction,
                                                                         message: str) -> None:
    with pytest.raises(PredictionMismatch, match=message):
        check_prediction(OUTPUTS, prediction, SHAPE)


def test_labels_present_and_undeclared_ones() -> None:
    few = np.zeros((3, 8, 8), dtype=np.uint8)
    few[1, 2, 2], few[2, 5, 5] = 3, 7
    assert labels_present(few) == [3, 7]
    assert undeclared_labels(few, {3}) == [7]
    many = np.arange(3 * 8 * 8, dtype=np.int64).reshape(3, 8, 8).astype(np.uint8)  # 0..191
    many[many == 100] = 0
    assert labels_present(many) == [v for v in range(1, 192) if v != 100]
    assert labels_present(np.array([[-2, 0, 5]])) == [-2, 5]
    assert labels_present(np.zeros((0, 4), dtype=np.uint8)) == []
