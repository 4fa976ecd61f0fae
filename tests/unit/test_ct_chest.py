"""The built-in ct-chest model on phantoms of known volume and on real anatomy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from ai.models.ct_chest import BODY, LEFT_LUNG, RIGHT_LUNG, CtChestModel
from ai.protocol import Assessment, ModelCannotRun
from ai.volume import load_volume
from tests.conftest import SHARED_DATA
from tests.phantoms import abdomen_phantom, chest_phantom, head_phantom, phantom_volume


@pytest.fixture(scope="module")
def model() -> CtChestModel:
    m = CtChestModel()
    m.load("cpu")
    return m


def _values(prediction) -> dict[str, float]:  # type: ignore[no-untyped-def]
    return {m.name: m.value for m in prediction.measurements}


@pytest.mark.parametrize("emphysema", [0.0, 0.15])
def test_phantom_volumes_within_3_percent_and_emphysema(model: CtChestModel, emphysema: float) -> None:
    phantom = chest_phantom(slices=120, size=256, emphysema_fraction=emphysema, seed=3)
    with torch.inference_mode():
        prediction = model.predict(phantom_volume(phantom))
    v = _values(prediction)
    assert v["right lung volume"] == pytest.approx(phantom.right_ml, rel=0.03)
    assert v["left lung volume"] == pytest.approx(phantom.left_ml, rel=0.03)
    assert v["right lung LAA-950"] == pytest.approx(phantom.laa950_pct, abs=1.0)
    # Left and right are not swapped: the right lung is on the image's left (low columns).
    labelmap = prediction.labelmap
    assert np.argwhere(labelmap == RIGHT_LUNG)[:, 2].mean() < np.argwhere(labelmap == LEFT_LUNG)[:, 2].mean()
    [finding] = prediction.findings
    assert finding.present == (emphysema > 0.06)
    # The trachea (above the lungs, in the middle) is not lung.
    assert not np.isin(labelmap[-3], [RIGHT_LUNG, LEFT_LUNG]).any()


def test_sharp_kernel_or_unknown_kernel_make_the_emphysema_finding_indeterminate(model: CtChestModel) -> None:
    """An unreliable %LAA-950 (here 15 %, well above the threshold) is "could not judge",
    never "absent" with score 0."""
    phantom = chest_phantom(slices=120, size=256, emphysema_fraction=0.15, seed=4)
    for kernel, why in (("B70f", "sharp reconstruction kernel B70f"), (None, "reconstruction kernel unknown")):
        with torch.inference_mode():
            prediction = model.predict(phantom_volume(phantom, kernel=kernel))  # type: ignore[arg-type]
        laa = [m for m in prediction.measurements if "LAA" in m.name]
        assert all(not m.reliable and why in m.note for m in laa)
        [finding] = prediction.findings
        assert finding.assessment is Assessment.INDETERMINATE and not finding.present
        assert finding.score is None and why in finding.reason
        assert prediction.provenance["convolution_kernel"] == kernel
        # volumes and mean density do not depend on the kernel
        assert all(m.reliable for m in prediction.measurements if "LAA" not in m.name)


def test_medium_kernel_b40f_is_standard_for_density(model: CtChestModel) -> None:
    phantom = chest_phantom(slices=120, size=256, emphysema_fraction=0.15, seed=4)
    with torch.inference_mode():
        prediction = model.predict(phantom_volume(phantom, kernel="B40f"))
    assert all(m.reliable for m in prediction.measurements)
    assert prediction.findings[0].assessment is Assessment.PRESENT


def test_thick_slices_keep_volumes_and_mark_density_indices(model: CtChestModel) -> None:
    phantom = chest_phantom(slices=30, size=256, emphysema_fraction=0.0, seed=5, slice_mm=8.0)
    with torch.inference_mode():
        prediction = model.predict(phantom_volume(phantom))
    values = {m.name: m for m in prediction.measurements}
    assert values["right lung volume"].value == pytest.approx(phantom.right_ml, rel=0.05)
    assert values["right lung volume"].reliable
    for name in ("right lung LAA-950", "left lung mean density"):
        assert not values[name].reliable and "8 mm slices" in values[name].note
    assert prediction.findings[0].assessment is Assessment.INDETERMINATE


def test_the_table_under_the_patient_is_not_body(model: CtChestModel) -> None:
    phantom = chest_phantom(slices=40, size=256, slice_mm=5.0, pixel_mm=1.3, seed=6, table=True)
    assert phantom.table is not None
    with torch.inference_mode():
        prediction = model.predict(phantom_volume(phantom))
    as_body = prediction.labelmap[phantom.table] == BODY
    # Only the wedge where the shell touches the back may join the body outline.
    assert as_body.mean() < 0.2, f"{as_body.mean():.0%} of the table outlined as body"
    assert _values(prediction)["right lung volume"] == pytest.approx(phantom.right_ml, rel=0.03)


@pytest.mark.parametrize("make, reason", [
    (head_phantom, "no lungs found"),
    (abdomen_phantom, "not a chest CT: lungs on"),
])
def test_head_and_abdomen_are_declined(model: CtChestModel, make, reason: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModelCannotRun, match=reason), torch.inference_mode():
        model.predict(phantom_volume(make()))


def test_real_chest_ct(model: CtChestModel) -> None:
    study = SHARED_DATA / "ct-chest-tcia-a0001"
    if not study.exists():
        pytest.skip(f"public sample not found under {SHARED_DATA}")
    results = {}
    for series in ("series-lung-kernel", "series-soft-tissue-kernel"):
        volume = load_volume(sorted((study / series).glob("*.dcm")))
        with torch.inference_mode():
            prediction = model.predict(volume)
        v = _values(prediction)
        results[series] = prediction.provenance["laa950_both_lungs_pct"]
        # Plausible adult lungs, the right one larger, each 1-4.5 L.
        assert 1000 < v["left lung volume"] < v["right lung volume"] < 4500
        assert -900 < v["right lung mean density"] < -700
        labelmap = prediction.labelmap
        # Patient right is at low columns (column direction +x = patient left).
        assert np.argwhere(labelmap == RIGHT_LUNG)[:, 2].mean() < np.argwhere(labelmap == LEFT_LUNG)[:, 2].mean()
        # No lung voxel outside the body: every lung voxel is enclosed by the body in its slice.
        lung = np.isin(labelmap, [RIGHT_LUNG, LEFT_LUNG])
        for z in range(0, labelmap.shape[0], 4):
            inside = ndimage.binary_fill_holes(labelmap[z] == BODY)
            assert not (lung[z] & ~inside).any()
        assert prediction.findings[0].indeterminate  # 5 mm slices: not reliable
        assert prediction.provenance["slice_thickness_mm"] == 5.0
    # The reference threshold method gives ~14 % (lung kernel) and ~0.3 % (soft tissue).
    assert results["series-lung-kernel"] == pytest.approx(14, abs=2)
    assert results["series-soft-tissue-kernel"] == pytest.approx(0.3, abs=0.5)
