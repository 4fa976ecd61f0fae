"""Triage levels and the findings policy, and the HL7 ORU^R01 a RIS receives (its
exchange over MLLP is in tests/integration/test_notification.py)."""

from __future__ import annotations

from ai.protocol import Assessment, Finding
from config.settings import Route, TriageRule
from node.pipeline.notification import hl7_escape
from node.pipeline.triage import arrival_level, findings_level, highest, job_priority

EMPHYSEMA = (Finding("emphysema suspected", score=0.9, assessment=Assessment.PRESENT),)


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
    weak = (Finding("emphysema suspected", score=0.4, assessment=Assessment.PRESENT),)
    assert findings_level(rules, "ct-chest", weak) is None
    other_model = [TriageRule(finding="emphysema suspected", model="other", level="critical")]
    assert findings_level(other_model, "ct-chest", EMPHYSEMA) is None
    # Without rules: a finding its model marks present with a score >= 0.5 is urgent.
    assert findings_level([], "ct-chest", EMPHYSEMA).level == "urgent"
    absent = (Finding("emphysema suspected", score=0.9, assessment=Assessment.ABSENT),)
    assert findings_level([], "ct-chest", absent) is None


def test_hl7_delimiters_in_values_are_escaped() -> None:
    assert hl7_escape("a^b~c\\d&e|f") == "a\\S\\b\\R\\c\\E\\d\\T\\e\\F\\f"
    assert hl7_escape("two\r\nlines") == "two  lines"


def test_an_indeterminate_finding_raises_no_level_under_any_rule() -> None:
    undetermined = (Finding("emphysema suspected", None, Assessment.INDETERMINATE,
                            "%LAA-950 not reliable: sharp reconstruction kernel B70f"),)
    named = [TriageRule(finding="emphysema suspected", min_score=0.0, level="critical")]
    assert findings_level(named, "ct-chest", undetermined) is None
    assert findings_level([], "ct-chest", undetermined) is None
