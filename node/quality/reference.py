"""Reference standards: what a prediction is judged against, each kept with its source.

- Report-derived labels, keyed by accession number (or Study Instance UID): a CSV file
  or an HL7 v2 result (ORU^R01) whose OBX segments name findings and say present or
  absent. A later word of the same source on the same case replaces the earlier one.
- Reference or corrected SEGs sent to the node (see :mod:`node.quality.reference_seg`).
- Radiologists' feedback on the study page or through the API.

For a finding, labels from reports outrank feedback (a report is the reading of record;
feedback is a quick word at the workstation); within a source the latest counts.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import hl7
from sqlalchemy import Connection, Engine, select

from storage.db import dialect_insert, writing
from storage.models import ReferenceLabel

#: Values read as present / absent (case-insensitive).
PRESENT = {"present", "positive", "pos", "yes", "y", "true", "1", "a", "abnormal", "detected"}
ABSENT = {"absent", "negative", "neg", "no", "n", "false", "0", "normal", "not detected"}
#: Source precedence for a finding's reference, strongest first.
PRECEDENCE = ("csv", "hl7", "seg", "feedback")


def case_key(study_instance_uid: str | None = None, accession_number: str | None = None) -> str:
    if study_instance_uid:
        return f"study:{study_instance_uid.strip()}"
    if accession_number:
        return f"accession:{accession_number.strip()}"
    raise ValueError("a reference label needs an accession number or a Study Instance UID")


def read_value(text: str) -> bool:
    value = text.strip().lower()
    if value in PRESENT:
        return True
    if value in ABSENT:
        return False
    raise ValueError(f"{text.strip()[:20]!r} is neither present nor absent "
                     f"(use present/absent, positive/negative, yes/no or 1/0)")


@dataclass(frozen=True)
class Label:
    case_key: str
    finding: str
    present: bool


@dataclass
class ImportReport:
    """What an import stored, and the lines it could not use (by line number and
    reason, never their content: they may hold patient data)."""

    stored: int = 0
    problems: list[str] = field(default_factory=list)


def parse_label_csv(text: str) -> tuple[list[Label], list[str]]:
    """Labels from a CSV with a header row: ``accession_number`` (or
    ``study_instance_uid``), ``finding`` and ``value``; one row per case and finding."""
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    columns = {c.strip().lower(): c for c in reader.fieldnames or []}
    if "finding" not in columns or "value" not in columns or not (
            {"accession_number", "study_instance_uid"} & columns.keys()):
        return [], ["the header must name accession_number (or study_instance_uid), finding and value; "
                    f"it names {', '.join(columns) or 'nothing'}"]
    labels, problems = [], []
    for line, row in enumerate(reader, start=2):
        def get(name: str, row: dict[str, str] = row) -> str:
            return (row.get(columns.get(name, ""), "") or "").strip()
        try:
            finding = get("finding")
            if not finding:
                raise ValueError("no finding")
            labels.append(Label(case_key(get("study_instance_uid"), get("accession_number")), finding[:64],
                                read_value(get("value"))))
        except ValueError as exc:
            problems.append(f"line {line}: {exc}")
    return labels, problems


def parse_hl7_result(message: str) -> tuple[list[Label], list[str]]:
    """Labels from an HL7 v2 ORU^R01: the accession number from OBR-3 (filler order
    number) or OBR-18, one label per OBX whose identifier's text (OBX-3.2) names the
    finding and whose value (OBX-5) or abnormal flag (OBX-8) says present or absent."""
    try:
        parsed = hl7.parse(message.replace("\n", "\r").replace("\r\r", "\r"))
    except Exception as exc:  # python-hl7 raises several kinds for a malformed message
        return [], [f"not an HL7 v2 message ({type(exc).__name__})"]
    labels, problems = [], []
    accession = ""
    for segment in parsed:
        kind = str(segment[0])
        if kind == "OBR":
            accession = (str(segment[3]) if len(segment) > 3 else "").split("^")[0] or \
                        (str(segment[18]) if len(segment) > 18 else "")
        elif kind == "OBX":
            identifier = str(segment[3]) if len(segment) > 3 else ""
            parts = identifier.split("^")
            finding = (parts[1] if len(parts) > 1 and parts[1] else parts[0]).strip()
            value = str(segment[5]) if len(segment) > 5 else ""
            flag = str(segment[8]) if len(segment) > 8 else ""
            try:
                if not accession:
                    raise ValueError("no accession number in OBR-3 or OBR-18 before it")
                if not finding:
                    raise ValueError("no finding named in OBX-3")
                present = read_value(value) if value.strip() else read_value(flag)
                labels.append(Label(case_key(accession_number=accession), finding[:64], present))
            except ValueError as exc:
                problems.append(f"OBX {segment[1] if len(segment) > 1 else '?'}: {exc}")
    if not labels and not problems:
        problems.append("no OBX segment with a finding")
    return labels, problems


def store_labels(engine: Engine, labels: Iterable[Label], source: str, detail: str) -> int:
    """Store (or replace) the labels of one source; the number stored."""
    now = time.time()
    rows = [{"case_key": label.case_key, "finding": label.finding, "present": label.present,
             "source": source, "detail": detail[:200], "recorded_at": now} for label in labels]
    if not rows:
        return 0
    with writing(engine) as conn:
        statement = dialect_insert(conn, ReferenceLabel.__table__)
        conn.execute(statement.on_conflict_do_update(
            index_elements=["source", "case_key", "finding"],
            set_={"present": statement.excluded.present, "detail": statement.excluded.detail,
                  "recorded_at": statement.excluded.recorded_at}), rows)
    return len(rows)


def import_labels(engine: Engine, text: str, kind: str, detail: str) -> ImportReport:
    """Import a CSV (``kind`` "csv") or an HL7 result ("hl7")."""
    if kind not in ("csv", "hl7"):
        raise ValueError(f"unknown reference format {kind!r} (csv or hl7)")
    labels, problems = parse_label_csv(text) if kind == "csv" else parse_hl7_result(text)
    return ImportReport(store_labels(engine, labels, kind, detail), problems)


def labels_by_case(conn: Connection) -> dict[str, dict[str, tuple[bool, str]]]:
    """Every stored label: case key -> finding -> (present, source), the strongest
    source's (then latest) word on each."""
    rank = {source: i for i, source in enumerate(PRECEDENCE)}
    best: dict[tuple[str, str], tuple[int, bool, str]] = {}
    # Oldest first: a later word of the same rank replaces an earlier one.
    for key, finding, present, source in conn.execute(
            select(ReferenceLabel.case_key, ReferenceLabel.finding, ReferenceLabel.present, ReferenceLabel.source)
            .order_by(ReferenceLabel.recorded_at, ReferenceLabel.id)):
        order = rank.get(source, len(rank))
        held = best.get((key, finding))
        if held is None or order <= held[0]:
            best[(key, finding)] = (order, bool(present), source)
    found: dict[str, dict[str, tuple[bool, str]]] = {}
    for (key, finding), (_, present, source) in best.items():
        found.setdefault(key, {})[finding] = (present, source)
    return found
