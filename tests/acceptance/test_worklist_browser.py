"""The web worklist in a real headless Chromium (Debian's chromium and chromedriver,
driven by Selenium): studies in priority order, a study's timeline, a dead letter
retried with its button, and a screenshot that shows the order by colour."""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.browser import headless_chromium as _browser
from tests.conftest import Node, send_study, wait_until
from tests.phantoms import chest_phantom, write_phantom_series

pytestmark = pytest.mark.integration

URGENT, ROUTINE = (0xEF, 0x6C, 0x00), (0x78, 0x90, 0x9C)  # the badges' colours in worklist.html


def _rows_of(pixels: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    match = np.all(np.abs(pixels[..., :3].astype(int) - colour) <= 8, axis=2)
    return np.nonzero(match.sum(axis=1) >= 20)[0]  # rows where a badge's colour runs across


def test_the_worklist_in_chromium(node_factory, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    shape = dict(slices=40, size=96, slice_mm=2.5, pixel_mm=3.0)
    routine, stat = tmp_path / "routine", tmp_path / "stat"
    write_phantom_series(chest_phantom(**shape, seed=3), routine, attributes={"AccessionNumber": "ROUT1"})
    write_phantom_series(chest_phantom(**shape, seed=4), stat,
                         attributes={"AccessionNumber": "STAT1", "RequestedProcedurePriority": "STAT"})
    node: Node = node_factory("quiet_period_s = 1\ncompletion_sweep_s = 0.5\njob_max_attempts = 1\n").start()
    send_study(node, routine)
    send_study(node, stat)

    def studies() -> list[dict]:
        with urllib.request.urlopen(node.api_url + "/api/studies", timeout=10) as response:
            return json.loads(response.read())
    wait_until(lambda: [s["state"] for s in studies()] == ["complete", "complete"], 60, "both studies complete")
    node.run("selftest", "queue", "--jobs", "1", "--fail")

    browser = _browser()
    try:
        browser.get(node.api_url + "/")
        rows = wait_until(lambda: len(r := browser.find_elements(By.CSS_SELECTOR, "#worklist tbody tr")) == 2 and r,
                          30, "two rows in the worklist")
        assert [r.get_attribute("data-priority") for r in rows] == ["urgent", "routine"]
        assert "STAT1" in rows[0].text and "URGENT" in rows[0].text.upper()
        assert "ROUT1" in rows[1].text

        rows[0].click()  # its timeline
        wait_until(lambda: "completed" in browser.find_element(By.ID, "timeline").text, 15, "the timeline")
        timeline = browser.find_element(By.ID, "timeline").text
        assert "first image" in timeline and "prioritized: urgent: request priority STAT" in timeline

        # The dead letter, retried from the page: the job runs (and, being made to fail, dies) again.
        button = wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, "#dead tbody tr button"), 30,
                            "a dead letter with its retry button")[0]
        job_id = browser.find_element(By.CSS_SELECTOR, "#dead tbody tr").get_attribute("data-job")

        def finished() -> float:
            with urllib.request.urlopen(node.api_url + "/api/jobs?kind=noop", timeout=10) as response:
                job = next(j for j in json.loads(response.read()) if str(j["id"]) == job_id)
            return float(job["finished_at"] or 0)  # none while queued again
        before = finished()
        button.click()
        wait_until(lambda: finished() > before, 30, "the retried job to run again")

        path = tmp_path / "worklist.png"
        table = browser.find_element(By.ID, "worklist").rect
        assert browser.save_screenshot(str(path))
    finally:
        browser.quit()
    x, y, w, h = (int(table[k]) for k in ("x", "y", "width", "height"))
    pixels = np.asarray(Image.open(path).convert("RGB"))[y:y + h, x:x + w]  # the worklist table
    urgent, routine_rows = _rows_of(pixels, URGENT), _rows_of(pixels, ROUTINE)
    assert urgent.size and routine_rows.size, "both level badges are drawn"
    assert urgent.max() < routine_rows.min(), "the urgent study is shown above the routine one"
    shutil.copy(path, Path(node.data_dir).parent / "worklist-screenshot.png")
