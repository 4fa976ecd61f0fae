"""Triage levels, the findings policy and the HL7 ORU^R01 a RIS receives."""

from __future__ import annotations

from config.settings import Notification, Route, TriageRule
from node.notify import StudyFacts, hl7_escape, oru_r01, send_mllp
from node.triage import arrival_level, findings_level, highest, job_priority
from tests.listeners import MllpListener

EMPHYSEMA = [{"name": "emphysema suspected", "score": 0.9, "present": True}]


def test_a_study_starts_at_the_higher_of_its_request_and_its_routes() -> None:
    routine, stroke = Route(name="chest", model="ct-chest"), Route(name="stroke", model="x", level="critical")
    assert arrival_level(None, [routine]).level == "routine"
    assert arrival_level("STAT", [routine]) .level == "urgent"
    assert arrival_level("STAT", [routine]).reason == "request priority STAT"
    assert arrival_level("ROUTINE", [stroke]).level == "critical"
    assert highest(["routine", "critical", "urgent"]) == "critical"
    # An urgent job is claimed before routine ones up to an hour older (5 min per step).
    assert job_priority(0, "urgent") * 300 == 3600 and job_priority(2, "critical") == 26


def test_findings_raise_a_study_by_the_rules() -> None:
    rules = [TriageRule(finding="Emphysema suspected", min_score=0.5, level="critical")]
    assert findings_level(rules, "ct-chest", EMPHYSEMA).level == "critical"
    assert findings_level(rules, "ct-chest", [{**EMPHYSEMA[0], "score": 0.4}]) is None
    other_model = [TriageRule(finding="emphysema suspected", model="other", level="critical")]
    assert findings_level(other_model, "ct-chest", EMPHYSEMA) is None
    # Without rules: a finding its model marks present with a score >= 0.5 is urgent.
    assert findings_level([], "ct-chest", EMPHYSEMA).level == "urgent"
    assert findings_level([], "ct-chest", [{**EMPHYSEMA[0], "present": False}]) is None


def test_an_oru_r01_reaches_an_mllp_listener_and_is_acknowledged() -> None:
    listener = MllpListener()
    notification = Notification(name="ris", type="hl7", host="127.0.0.1", port=listener.port)
    facts = StudyFacts("1.2.3.4", "ACC|1", 1, "critical", "ct-chest: emphysema suspected (score 0.90)",
                       EMPHYSEMA, patient_id="P1", patient_name="Doe^Jane", birth_date="19500101", sex="F",
                       study_date="20260101", study_time="101500", modality="CT")
    message = oru_r01(facts, notification, control_id="AINODE-7", now=0)
    assert send_mllp("127.0.0.1", listener.port, message, 5) == "AA"
    [received] = listener.messages
    segments = {s.split("|")[0]: s.split("|") for s in received.strip("\r").split("\r")}
    assert segments["MSH"][8] == "ORU^R01^ORU_R01" and segments["MSH"][9] == "AINODE-7"
    assert segments["PID"][3] == "P1" and segments["PID"][5] == "Doe^Jane"
    assert segments["OBR"][3] == "ACC\\F\\1"  # the delimiter in the accession number escaped
    obx = [s.split("|") for s in received.strip("\r").split("\r") if s.startswith("OBX")]
    assert obx[0][5] == "CRITICAL" and obx[2][5] == "1.2.3.4" and obx[3][5] == "0.900" and obx[3][8] == "A"
    listener.answer = "AE"
    try:
        send_mllp("127.0.0.1", listener.port, message, 5)
        raise AssertionError("a rejected message must raise")
    except RuntimeError as exc:
        assert "AE" in str(exc)
    listener.shutdown()
    assert hl7_escape("a^b~c\\d&e") == "a\\S\\b\\R\\c\\E\\d\\T\\e"
