"""The model performance page in a real headless Chromium, over two months of one
model's recorded predictions planned so that the figures are known: labels for every
case, reference-SEG comparisons for the positives, radiologists who disagree on a few,
a scanner on which the model misses more, and a kernel mix that shifts in the last
week. The page shows the figures the test computes, the ROC, Bland-Altman and
over-time plots drawn by the node, the worse subgroup marked, the shifted signal, and
the disagreements linked to their studies; a screenshot is kept."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from storage.db import open_database
from tests.browser import headless_chromium
from tests.conftest import Node, wait_until
from tests.quality_rows import PlannedCase, profile, record_cases

pytestmark = pytest.mark.integration

DAY = 86400.0


def _planned(seed: int = 7) -> list[PlannedCase]:
    rng = np.random.default_rng(seed)
    now = time.time()
    cases = []
    for when in np.sort(rng.uniform(now - 60 * DAY, now - 0.1 * DAY, 400)):
        recent = when > now - 7 * DAY
        scanner = "BadScan" if rng.random() < 0.3 else "GoodScan"
        truth = bool(rng.random() < 0.4)
        miss = 0.6 if scanner == "BadScan" else 0.1
        score = float(np.clip(rng.normal(0.75 if truth and rng.random() > miss else 0.3, 0.12), 0, 1))
        kernel = "B70f" if rng.random() < (0.85 if recent else 0.15) else "B30f"
        comparison = None
        if truth:
            reference = float(rng.uniform(5, 40))
            predicted = reference * float(rng.normal(0.95, 0.08))
            comparison = (float(np.clip(rng.normal(0.85, 0.05), 0, 1)), predicted, reference)
        feedback = ("disagree", "dr.house", "missed a lesion") if truth and score < 0.5 and rng.random() < 0.3 else None
        cases.append(PlannedCase(float(when), profile(manufacturer=scanner, kernel=kernel), score >= 0.5, score,
                                 truth=truth, comparison=comparison, feedback=feedback))
    return cases


@pytest.mark.timeout(300)
def test_the_model_page_shows_known_figures_plots_subgroups_drift_and_disagreements(
        node_factory, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    node: Node = node_factory("[quality]\ninterval_s = 0\n").start()
    cases = _planned()
    engine = open_database(f"sqlite:///{node.data_dir / 'ainode.db'}")
    record_cases(engine, "planned-model", cases)
    engine.dispose()
    tp = sum(1 for c in cases if c.truth and c.called)
    positives = sum(1 for c in cases if c.truth)
    bad = [c for c in cases if c.profile["manufacturer"] == "BadScan" and c.truth]
    good = [c for c in cases if c.profile["manufacturer"] == "GoodScan" and c.truth]
    assert sum(c.called for c in bad) / len(bad) < sum(c.called for c in good) / len(good) - 0.15  # as planned

    browser = headless_chromium()
    try:
        browser.set_window_size(1300, 2400)
        browser.get(node.api_url + "/model?name=planned-model")
        wait_until(lambda: browser.find_element(By.ID, "status").text.startswith("updated"), 60, "the page")
        figures = browser.find_element(By.CSS_SELECTOR, "table.finding-figures").text
        assert f"Sensitivity {tp / positives:.2f} (95% CI" in figures and f"; {tp}/{positives}" in figures
        images = browser.find_elements(By.CSS_SELECTOR, "img")
        assert {i.get_attribute("alt").split(" ")[0] for i in images} >= {"ROC", "Bland-Altman", "finding"}
        wait_until(lambda: all(browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth",
                                                      i) for i in images), 30, "the plots to load")
        worse = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "table.subgroups tr.worse")]
        assert any(r.startswith("Scanner manufacturer BadScan") for r in worse), worse
        assert not any("GoodScan" in r for r in worse)
        drift = {r.find_elements(By.TAG_NAME, "td")[0].text: r.find_elements(By.TAG_NAME, "td")[1]
                 for r in browser.find_elements(By.CSS_SELECTOR, "#drift tbody tr")}
        assert drift["input.kernel"].text == "shifted"
        assert drift["input.kernel"].get_attribute("class") == "drift-shifted"
        assert drift["input.manufacturer"].text == "stable"
        links = browser.find_elements(By.CSS_SELECTOR, "#disagreements a")
        # A report's label outranks a radiologist's word on the same finding.
        disagreed = sum(1 for c in cases if c.truth is not None and c.called != c.truth)
        assert len(links) == min(100, disagreed) and links[0].get_attribute("href").startswith(
            node.api_url + "/study?uid=")
        shot = tmp_path / "model-page.png"
        browser.save_screenshot(str(shot))
        pixels = np.asarray(Image.open(io.BytesIO(shot.read_bytes())).convert("RGB"))
        assert pixels.std() > 20  # a page with content, not a blank one
        browser.execute_script("document.getElementById('status').textContent = 'clicked'")
        browser.find_element(By.ID, "recompute").click()
        wait_until(lambda: browser.find_element(By.ID, "status").text.startswith(("updated", "not recomputed")),
                   60, "the recomputation")
        assert "not recomputed" not in browser.find_element(By.ID, "status").text
    finally:
        browser.quit()
