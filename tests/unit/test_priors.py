"""Priors, the rules alone: which of the PACS's studies are a study's priors, and
ct-chest's change since the most recent usable one (on phantoms of known volume)."""

from __future__ import annotations

import dataclasses
from datetime import date

import numpy as np
import pytest
import torch

from ai.models.ct_chest import CtChestModel
from ai.protocol import PriorVolume
from config.settings import PriorsRule
from node.network.archive import StudyMatch
from node.pipeline.priors import relevant_priors
from tests.phantoms import chest_phantom, phantom_volume


def _study(uid: str, when: str, modalities: tuple[str, ...] = ("CT",)) -> StudyMatch:
    return StudyMatch(uid, "", when, modalities, 100, "")


def test_the_most_recent_earlier_studies_within_age_and_modality() -> None:
    matches = [_study("now", "20261101"), _study("later", "20261201"), _study("mr", "20260901", ("MR",)),
               _study("recent", "20251101"), _study("old", "20241101"), _study("ancient", "20101101"),
               _study("undated", ""), _study("unlisted", "20260101", ())]
    today = date(2026, 11, 1)
    chosen = relevant_priors(matches, "now", today, PriorsRule(count=2, max_age_days=1000), {"CT"})
    # A study whose modalities the PACS does not list may be one: it passes.
    assert [p.study_instance_uid for p in chosen] == ["unlisted", "recent"]
    chosen = relevant_priors(matches, "now", today, PriorsRule(count=5, max_age_days=1000, same_modality=False),
                             {"CT"})
    assert [p.study_instance_uid for p in chosen] == ["mr", "unlisted", "recent", "old"]
    assert relevant_priors(matches, "now", today, PriorsRule(count=5, max_age_days=30), {"CT"}) == []


@pytest.fixture(scope="module")
def model() -> CtChestModel:
    m = CtChestModel()
    m.load("cpu")
    return m


def _short(volume: PriorVolume, slices: int) -> PriorVolume:
    """The prior with only its upper ``slices`` (the lung bases cut off)."""
    v = volume.volume
    cut = v.array.shape[0] - slices
    origin = (v.origin[0], v.origin[1], v.origin[2] + cut * v.spacing[0])
    shorter = dataclasses.replace(v, array=np.ascontiguousarray(v.array[cut:]), origin=origin,
                                  sop_instance_uids=v.sop_instance_uids[cut:], frame_numbers=v.frame_numbers[cut:])
    return PriorVolume(shorter, volume.study_date, volume.study_instance_uid)


def test_change_since_the_most_recent_prior_with_the_same_kernel_class(model: CtChestModel) -> None:
    phantom = chest_phantom(slices=60, size=192, slice_mm=2.5, pixel_mm=1.6, seed=4)
    current = phantom_volume(phantom)
    smaller = _short(PriorVolume(phantom_volume(phantom), "20251101", "p1"), 48)
    sharp = PriorVolume(phantom_volume(phantom, kernel="B70f"), "20260601", "p0")
    with torch.inference_mode():
        alone = {m.name: m.value for m in model.predict(current).measurements}
        then = {m.name: m.value for m in model.predict(smaller.volume).measurements}
        prediction = model.predict_with_priors(current, [sharp, smaller])
    values = {m.name: m for m in prediction.measurements}
    for side in ("right", "left"):
        expected = 100 * (alone[f"{side} lung volume"] - then[f"{side} lung volume"]) / then[f"{side} lung volume"]
        assert values[f"{side} lung volume change"].value == pytest.approx(expected)
        assert expected > 2  # the cut-short prior's lungs are smaller
        assert values[f"{side} lung LAA-950 change"].reliable
    # The more recent prior has a sharp kernel: not comparable, skipped with the reason.
    assert prediction.provenance["prior"]["study_date"] == "20251101"
    [point] = prediction.provenance["trend"]
    assert point["study_date"] == "20251101" and point["values"]["right lung volume"] == then["right lung volume"]
    [why] = prediction.provenance["priors_not_used"]
    assert why.startswith("20260601: kernel B70f")
    # No usable prior: the current values only, and no change.
    with torch.inference_mode():
        alone_prediction = model.predict_with_priors(current, [sharp])
    assert not [m for m in alone_prediction.measurements if m.name.endswith("change")]
    assert alone_prediction.provenance["prior"] is None


def test_the_trend_holds_every_usable_prior_and_the_change_the_most_recent(model: CtChestModel) -> None:
    phantom = chest_phantom(slices=60, size=192, slice_mm=2.5, pixel_mm=1.6, seed=4)
    current = phantom_volume(phantom)
    last_year = _short(PriorVolume(phantom_volume(phantom), "20251101", "p1"), 52)
    two_years = _short(PriorVolume(phantom_volume(phantom), "20241101", "p2"), 44)
    with torch.inference_mode():
        values = {p.study_date: {m.name: m.value for m in model.predict(p.volume).measurements}
                  for p in (last_year, two_years)}
        prediction = model.predict_with_priors(current, [last_year, two_years])
    trend = prediction.provenance["trend"]
    assert [p["study_date"] for p in trend] == ["20251101", "20241101"]  # most recent first
    for point in trend:
        assert point["values"] == values[point["study_date"]]
    assert values["20241101"]["right lung volume"] < values["20251101"]["right lung volume"]
    change = {m.name: m.value for m in prediction.measurements}["right lung volume change"]
    now = {m.name: m.value for m in prediction.measurements}["right lung volume"]
    last = values["20251101"]["right lung volume"]
    assert change == pytest.approx(100 * (now - last) / last)  # against the most recent one


def test_a_lung_keeps_its_tracking_uid_across_the_patients_studies() -> None:
    from ai.encoders.identity import ResultIdentity

    def identity(study: str, patient: str) -> ResultIdentity:
        return ResultIdentity(study, f"{study}.1", "ct-chest", "1.0.0", 1, patient_id=patient)

    this_year, last_year, other = identity("1.2.3", "P1"), identity("1.2.4", "P1"), identity("1.2.5", "P2")
    assert this_year.tracking_uid(2) == last_year.tracking_uid(2) != this_year.tracking_uid(3)
    assert this_year.tracking_uid(2) != other.tracking_uid(2)
    assert this_year.uid("sr-instance") != last_year.uid("sr-instance")  # the objects are each study's own
    # Without a Patient ID a study's tracking UIDs are its own.
    assert identity("1.2.3", "").tracking_uid(2) != identity("1.2.4", "").tracking_uid(2)
