"""Telling the RIS (HL7 v2 ORU^R01 over MLLP) or any web service (a JSON webhook) that
a study reached a level, with the findings behind it. Run as ``notify`` jobs, so a
receiver that is down gets the message later, retried like deliveries.

The ORU carries the patient's identifiers (the RIS needs them to match the order);
the webhook carries none, only the study's UID and accession number, since webhooks
often end in chat tools.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from dataclasses import dataclass
from typing import Any

from pydicom import dcmread
from sqlalchemy import Engine, select

from config.settings import Notification, Settings
from node.httpclient import Unreachable, http_request
from node.workers import JobContext, PermanentJobError, current_study
from storage.files import FileStore
from storage.inventory import first_instance_path
from storage.models import Prediction, Study
from storage.queue import ClaimedJob
from storage.timeline import NOTIFIED, NOTIFY_FAILED, record_now

log = logging.getLogger(__name__)

START, END = b"\x0b", b"\x1c\x0d"  # MLLP framing


def hl7_escape(text: str) -> str:
    """HL7 v2 escapes for the delimiters in a field value."""
    out = text.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\")
    return out.replace("~", "\\R\\").replace("&", "\\T\\").replace("\r", " ").replace("\n", " ")


@dataclass(frozen=True)
class StudyFacts:
    """What a notification says about a study."""

    study_instance_uid: str
    accession_number: str
    results_version: int
    level: str
    reason: str
    findings: list[dict[str, Any]]
    patient_id: str = ""
    patient_name: str = ""
    birth_date: str = ""
    sex: str = ""
    study_date: str = ""
    study_time: str = ""
    modality: str = ""


def oru_r01(facts: StudyFacts, notification: Notification, control_id: str, now: float | None = None) -> str:
    """An HL7 v2.5.1 ORU^R01: the study's level and reason, then one OBX per finding
    (its score, and whether the model marks it present)."""
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(now or time.time()))
    e = hl7_escape
    name = "^".join(e(part) for part in facts.patient_name.split("^"))
    segments = [
        f"MSH|^~\\&|AINODE|{e(notification.sending_facility)}|{e(notification.receiving_application)}|"
        f"{e(notification.receiving_facility)}|{stamp}+0000||ORU^R01^ORU_R01|{e(control_id)}|P|2.5.1",
        f"PID|1||{e(facts.patient_id)}||{name}||{e(facts.birth_date)}|{e(facts.sex)}",
        f"OBR|1||{e(facts.accession_number)}|AITRIAGE^AI triage^99AINODE|||"
        f"{e(facts.study_date + facts.study_time[:6])}|||||||||||{e(facts.accession_number)}||||"
        f"{stamp}+0000||{e(facts.modality)}|F",
        f"OBX|1|ST|AILEVEL^AI worklist level^99AINODE||{facts.level.upper()}||||||F",
        f"OBX|2|ST|AIREASON^AI triage reason^99AINODE||{e(facts.reason)}||||||F",
        f"OBX|3|ST|110180^Study Instance UID^DCM||{e(facts.study_instance_uid)}||||||F",
    ]
    for i, finding in enumerate(facts.findings, start=4):
        flag = "A" if finding.get("present") else "N"
        segments.append(f"OBX|{i}|NM|AISCORE^{e(str(finding['name']))[:60]}^99AINODE||"
                        f"{float(finding['score']):.3f}|||{flag}|||F")
    return "\r".join(segments) + "\r"


def send_mllp(host: str, port: int, message: str, timeout_s: float) -> str:
    """Send one message framed for MLLP and return the acknowledgement's MSA-1
    (AA/CA accept); raises when the receiver cannot be reached or rejects it."""
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(START + message.encode("utf-8") + END)
        reply = b""
        while END not in reply:
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError("the MLLP receiver closed the connection without an acknowledgement")
            reply += chunk
    text = reply.strip(START + END).decode("utf-8", "replace")
    msa = next((seg.split("|") for seg in text.replace("\n", "\r").split("\r") if seg.startswith("MSA|")), None)
    if msa is None or len(msa) < 2:
        raise RuntimeError("the MLLP acknowledgement has no MSA segment")
    if msa[1] not in ("AA", "CA"):
        raise RuntimeError(f"the receiver answered {msa[1]}" + (f": {msa[3][:80]}" if len(msa) > 3 else ""))
    return msa[1]


def post_webhook(url: str, document: dict[str, Any], timeout_s: float) -> int:
    try:
        status, _ = http_request(url, json.dumps(document).encode(),
                                 {"Content-Type": "application/json", "User-Agent": "AINode"}, "POST", timeout_s)
    except Unreachable as exc:
        raise RuntimeError(f"webhook unreachable: {exc}") from None
    if not 200 <= status < 300:
        raise RuntimeError(f"webhook answered HTTP {status}")
    return status


class NotificationHandler:
    """The ``notify`` job handler of a general worker."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self._settings = settings
        self._engine = engine
        self._store = FileStore(settings.data_dir)

    def _notification(self, name: str) -> Notification:
        for notification in self._settings.notifications:
            if notification.name == name:
                return notification
        raise PermanentJobError(f"notification {name!r} is no longer configured; add it back to "
                                "[[notifications]] and retry the job")

    def _facts(self, study: Any, version: int, level: str, reason: str) -> StudyFacts:
        with self._engine.connect() as conn:
            accession = conn.execute(select(Study.accession_number).where(Study.id == study.id)).scalar()
            findings = [f for row in conn.execute(select(Prediction.findings).where(
                Prediction.study_id == study.id, Prediction.results_version == version)).scalars() for f in row]
            path = first_instance_path(conn, study.id)
        patient: dict[str, str] = {}
        if path:
            try:
                ds = dcmread(self._store.absolute(path), stop_before_pixels=True)
                patient = {k: str(ds.get(kw, "") or "") for k, kw in (
                    ("patient_id", "PatientID"), ("patient_name", "PatientName"), ("birth_date", "PatientBirthDate"),
                    ("sex", "PatientSex"), ("study_date", "StudyDate"), ("study_time", "StudyTime"),
                    ("modality", "Modality"))}
            except Exception:
                log.warning("study %s: its images' patient attributes could not be read for the "
                            "notification", study.study_instance_uid)
        return StudyFacts(study.study_instance_uid, accession or "", version, level, reason, findings, **patient)

    def notify(self, job: ClaimedJob, ctx: JobContext) -> None:
        study = current_study(self._engine, job)
        if study is None:
            return
        version = int(job.results_version or 0)
        notification = self._notification(job.payload["notification"])
        facts = self._facts(study, version, job.payload["level"], job.payload.get("reason", ""))
        try:
            if notification.type == "hl7":
                message = oru_r01(facts, notification, control_id=f"AINODE-{job.id}")
                answer = send_mllp(notification.host or "", int(notification.port or 0), message,
                                   notification.timeout_s)
                what = f"ORU^R01 to {notification.name} ({answer})"
            else:
                document = {
                    "event": "study.level", "level": facts.level, "reason": facts.reason,
                    "study_instance_uid": facts.study_instance_uid, "accession_number": facts.accession_number,
                    "results_version": version, "findings": facts.findings,
                }
                status = post_webhook(notification.url or "", document, notification.timeout_s)
                what = f"webhook {notification.name} (HTTP {status})"
        except Exception as exc:
            record_now(self._engine, study.id, NOTIFY_FAILED,
                       f"{notification.name}: {type(exc).__name__}: {exc}", version)
            raise
        record_now(self._engine, study.id, NOTIFIED, f"{facts.level}: {what}", version)
        log.info("study %s v%d: %s notified (%s)", study.study_instance_uid, version, notification.name,
                 facts.level)
