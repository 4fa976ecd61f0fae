"""The study page in a real headless Chromium: three chest CTs on the built-in rule, one
with emphysema (present), one without (absent), one on a sharp kernel (indeterminate);
each page shows the series used, the measurements with unit and reliability, the
finding in its own look, and the key image with the segments' outline colours. The
same results on the command line (`ainode results`) and in the SR. The node has named
users: the page asks for a token, a viewer's feedback is refused, and a radiologist's
disagreement with its reason is stored with their name."""

from __future__ import annotations

import io
import json
import shutil
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread

from ai.encoders.seg import PALETTE
from tests.browser import headless_chromium
from tests.conftest import Node, send_study, wait_until
from tests.phantoms import chest_phantom, write_phantom_series

pytestmark = pytest.mark.integration

#: The finding badges' backgrounds in study.html.
BADGES = {"present": (0xFF, 0xEB, 0xEE), "absent": (0xE8, 0xF5, 0xE9), "indeterminate": (0xFF, 0xF8, 0xE1)}


def _get(node: Node, path: str, token: str) -> bytes:
    request = urllib.request.Request(node.api_url + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=20) as response:
        return bytes(response.read())


def _alert(browser: Any) -> Any:
    from selenium.common.exceptions import NoAlertPresentException

    try:
        return browser.switch_to.alert
    except NoAlertPresentException:
        return None


def _share(pixels: np.ndarray, colour: tuple[int, int, int], tolerance: int = 10) -> float:
    return float(np.all(np.abs(pixels[..., :3].astype(int) - colour) <= tolerance, axis=2).mean())


def test_the_study_page_shows_each_state_numbers_and_the_overlay(node_factory, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    shape = dict(slices=48, size=128, slice_mm=2.5, pixel_mm=2.4)
    cases = {  # accession: (emphysema fraction, kernel, expected assessment)
        "EMPH1": (0.2, "B30f", "present"),
        "NORM1": (0.0, "B30f", "absent"),
        "SHARP1": (0.2, "B70f", "indeterminate"),
    }
    for accession, (fraction, kernel, _) in cases.items():
        write_phantom_series(chest_phantom(**shape, emphysema_fraction=fraction, seed=len(accession)),
                             tmp_path / accession, kernel=kernel, description="CT Thorax",
                             attributes={"AccessionNumber": accession})
    node: Node = node_factory("quiet_period_s = 1\ncompletion_sweep_s = 0.5\n", inference=True).start()
    viewer = node.run("users", "add", "vic.viewer", "--role", "viewer").stdout.strip()
    doctor = node.run("users", "add", "dr.lee", "--role", "radiologist").stdout.strip()
    for accession in cases:
        send_study(node, tmp_path / accession)

    def studies() -> list[dict]:
        return list(json.loads(_get(node, "/api/studies", viewer)))
    wait_until(lambda: len(s := studies()) == 3 and all(x["state"] == "done" for x in s), 180, "three studies done")
    by_accession = {s["accession_number"]: s for s in studies()}
    # Indeterminate raises nothing: only the study with emphysema present is raised.
    assert by_accession["SHARP1"]["priority"] == "routine"
    assert by_accession["EMPH1"]["priority"] == "urgent"
    assert any(h.startswith("right lung volume") and h.endswith(" mL") for h in by_accession["NORM1"]["headline"])

    # The command line says the same.
    sharp_uid = by_accession["SHARP1"]["study_instance_uid"]
    report = json.loads(node.run("results", sharp_uid, "--json").stdout)
    [result] = report["results"]
    assert [f["assessment"] for f in result["findings"]] == ["indeterminate"]
    assert "sharp reconstruction kernel B70f" in result["findings"][0]["reason"]
    assert result["series"]["kernel"] == "B70f" and result["series"]["kernel_class"] == "sharp"
    units = {m["name"]: m["unit"] for m in result["measurements"]}
    assert units["right lung mean density"] == "HU" and units["right lung volume"] == "mL"
    text = node.run("results", sharp_uid).stdout
    assert "emphysema suspected: indeterminate" in text and "mean density" in text and " HU" in text
    # ... and the SR, fetched from the node.
    [sr] = [o for o in result["objects"] if o["kind"] == "sr"]
    report_sr = dcmread(io.BytesIO(_get(node, f"/api/studies/{sharp_uid}/objects/{sr['sop_instance_uid']}", viewer)))
    assert "373068000" in str(report_sr.ContentSequence)  # Undetermined, never Absent

    browser = headless_chromium()

    def log_in(token: str) -> None:  # the page's own form, shown when the API answers 401
        browser.execute_script("sessionStorage.clear()")
        browser.get(node.api_url + "/")
        wait_until(lambda: browser.find_element(By.ID, "login").is_displayed(), 30, "the token form")
        browser.find_element(By.ID, "token").send_keys(token)
        browser.find_element(By.ID, "save-token").click()
    try:
        browser.get(node.api_url + "/")
        log_in(viewer)
        rows = wait_until(lambda: len(r := browser.find_elements(By.CSS_SELECTOR, "#worklist tbody tr")) == 3 and r,
                          30, "three rows in the worklist")
        assert all("lung volume" in r.text for r in rows)  # the headline numbers
        for accession, (_, kernel, assessment) in cases.items():
            uid = by_accession[accession]["study_instance_uid"]
            browser.get(f"{node.api_url}/study?uid={uid}")

            def loaded() -> bool:
                images = browser.find_elements(By.CSS_SELECTOR, "img.key-image")
                return bool(images) and browser.execute_script(
                    "return arguments[0].complete && arguments[0].naturalWidth > 0", images[0])
            wait_until(loaded, 30, f"the key image of {accession}")
            page = browser.find_element(By.TAG_NAME, "main").text
            [badge] = browser.find_elements(By.CSS_SELECTOR, ".finding")
            assert badge.get_attribute("data-assessment") == assessment
            assert {"present": "PRESENT", "absent": "absent", "indeterminate": "indeterminate"}[assessment] \
                in badge.text
            assert f"kernel {kernel}" in page and "right lung volume" in page and "mL" in page
            if assessment == "indeterminate":
                assert "not reliable: sharp reconstruction kernel B70f" in page
            assert "completed" in page and "inferred" in page  # the timeline
            assert "rule 'ct-chest' -> model ct-chest: MATCHED" in page  # why this series

            path = tmp_path / f"{accession}.png"
            assert browser.save_screenshot(str(path))
            pixels = np.asarray(Image.open(path).convert("RGB"))
            image = browser.find_element(By.CSS_SELECTOR, "img.key-image").rect
            x, y, w, h = (int(image[k]) for k in ("x", "y", "width", "height"))
            overlay = pixels[y:y + h, x:x + w]
            if overlay.size:  # the image is in view: the outlines in the SEG's colours
                for colour in PALETTE[:3]:  # body, right lung, left lung
                    assert _share(overlay, colour, 25) > 0.0005, f"{accession}: outline colour {colour} missing"
            box = badge.rect
            bx, by, bw, bh = (int(box[k]) for k in ("x", "y", "width", "height"))
            badge_pixels = pixels[by:by + bh, bx:bx + bw]
            assert _share(badge_pixels, BADGES[assessment], 6) > 0.3, f"{accession}: badge colour"
            for other, colour in BADGES.items():
                if other != assessment:
                    assert _share(badge_pixels, colour, 6) < 0.05
            shutil.copy(path, Path(node.data_dir).parent / f"study-page-{accession}.png")
            if accession == "EMPH1":  # feedback from the page: a viewer may not give it, a radiologist may
                browser.find_element(By.CSS_SELECTOR, "button.feedback-agree").click()
                wait_until(lambda: "a radiologist's token is needed" in browser.find_element(By.ID, "status").text,
                           30, "the viewer's feedback refused")
                log_in(doctor)
                browser.get(f"{node.api_url}/study?uid={uid}")
                wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, "button.feedback-disagree"), 30,
                           "the study page as dr.lee")
                browser.find_element(By.CSS_SELECTOR, "button.feedback-disagree").click()
                prompt = wait_until(lambda: _alert(browser), 10, "the reason prompt")
                prompt.send_keys("bullae only, no emphysema")
                prompt.accept()
                wait_until(lambda: "dr.lee: disagree (bullae only, no emphysema)"
                           in browser.find_element(By.TAG_NAME, "main").text, 30, "the feedback on the page")
                [given] = json.loads(node.run("results", uid, "--json").stdout)["results"][0]["feedback"]
                assert (given["target_kind"], given["target"], given["verdict"], given["user"], given["reason"]) == (
                    "finding", "emphysema suspected", "disagree", "dr.lee", "bullae only, no emphysema")
                log_in(viewer)
    finally:
        browser.quit()
