"""Telling the RIS (HL7 v2 ORU^R01 over MLLP) or any web service (a JSON webhook) that
a study reached a level, with the findings behind it. Run as ``notify`` jobs, so a
receiver that is down gets the message later, retried like deliveries.

The ORU carries the patient's identifiers (the RIS needs them to match the order);
the webhook carries none, only the study's UID and accession number, since webhooks
often end in chat tools.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import hl7
import hl7.mllp
from pydicom import dcmread
from sqlalchemy import Engine, select

from ai.protocol import Finding
from config.settings import Notification, Settings
from node.jobs.context import JobContext, configured, current_study
from node.jobs.kinds import NotifyPayload, StudyWork, read_payload
from node.network.httpclient import post_json
from storage.files import FileStore
from storage.inventory import first_instance_path
from storage.models import PredictionRecord, Study
from storage.queue import ClaimedJob
from storage.timeline import NOTIFIED, NOTIFY_FAILED, record_now

log = logging.getLogger(__name__)

#: HL7 v2's default delimiters; a parsed MSH with them is what escapes field values.
_MSH_START = "MSH|^~\\&|"
_DELIMITERS = hl7.parse(_MSH_START + "AINODE\r")


def hl7_escape(text: str) -> str:
    """A field value with HL7 v2's delimiters (and characters beyond ASCII) escaped
    (python-hl7); line breaks become spaces."""
    return str(_DELIMITERS.escape(text.replace("\r", " ").replace("\n", " ")))


@dataclass(frozen=True)
class StudyFacts:
    """What a notification says about a study."""

    study_instance_uid: str
    accession_number: str
    results_version: int
    level: str
    reason: str
    findings: tuple[Finding, ...]
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
        f"{_MSH_START}AINODE|{e(notification.sending_facility)}|{e(notification.receiving_application)}|"
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
        if finding.indeterminate or finding.score is None:  # no number to give, and no flag
            segments.append(f"OBX|{i}|ST|AISCORE^{e(finding.name)[:60]}^99AINODE||"
                            f"{e('indeterminate: ' + finding.reason)[:200]}||||||F")
            continue
        flag = "A" if finding.present else "N"
        segments.append(f"OBX|{i}|NM|AISCORE^{e(finding.name)[:60]}^99AINODE||"
                        f"{finding.score:.3f}|||{flag}|||F")
    message = "\r".join(segments) + "\r"
    hl7.parse(message)  # it must read back as HL7 v2
    return message


async def _exchange(host: str, port: int, message: str) -> hl7.Message:
    reader, writer = await hl7.mllp.open_hl7_connection(host, port, encoding="utf-8")
    try:
        writer.writemessage(hl7.parse(message))
        await writer.drain()
        return await reader.readmessage()
    finally:
        writer.close()


def send_mllp(host: str, port: int, message: str, timeout_s: float) -> str:
    """Send one message over MLLP (python-hl7's framing) and return the
    acknowledgement's MSA-1 (AA/CA accept); raises when the receiver cannot be
    reached, does not answer in time, or rejects the message."""
    try:
        ack = asyncio.run(asyncio.wait_for(_exchange(host, port, message), timeout_s))
    except TimeoutError:
        raise RuntimeError(f"the MLLP receiver did not acknowledge within {timeout_s:g} s") from None
    except asyncio.IncompleteReadError:
        raise RuntimeError("the MLLP receiver closed the connection without an acknowledgement") from None
    except OSError as exc:
        raise RuntimeError(f"the MLLP receiver at {host}:{port} cannot be reached ({type(exc).__name__})") from None
    try:
        msa = ack.segment("MSA")
    except KeyError:
        raise RuntimeError("the MLLP acknowledgement has no MSA segment") from None
    code = str(msa[1])
    if code not in ("AA", "CA"):
        text = str(msa[3]) if len(msa) > 3 else ""
        raise RuntimeError(f"the receiver answered {code}" + (f": {text[:80]}" if text else ""))
    return code


class NotificationHandler:
    """The ``notify`` job handler of a general worker."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self._settings = settings
        self._engine = engine
        self._store = FileStore(settings.data_dir)

    def _facts(self, work: StudyWork, payload: NotifyPayload) -> StudyFacts:
        with self._engine.connect() as conn:
            accession = conn.execute(select(Study.accession_number).where(Study.id == work.study_id)).scalar()
            findings = tuple(Finding.from_json(f) for row in conn.execute(select(PredictionRecord.findings).where(
                PredictionRecord.study_id == work.study_id,
                PredictionRecord.results_version == work.results_version)).scalars() for f in row)
            path = first_instance_path(conn, work.study_id)
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
                            "notification", work.study_instance_uid)
        return StudyFacts(work.study_instance_uid, accession or "", work.results_version, payload.level,
                          payload.reason, findings, **patient)

    def __call__(self, job: ClaimedJob, ctx: JobContext) -> None:
        payload = read_payload(NotifyPayload, job)
        work = current_study(self._engine, job)
        version = work.results_version
        notification = configured(self._settings.notifications, payload.notification, "notifications")
        facts = self._facts(work, payload)
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
                    "results_version": version, "findings": [f.to_json() for f in facts.findings],
                }
                status = post_json(notification.url or "", document, notification.timeout_s)
                what = f"webhook {notification.name} (HTTP {status})"
        except Exception as exc:
            record_now(self._engine, work.study_id, NOTIFY_FAILED,
                       f"{notification.name}: {type(exc).__name__}: {exc}", version)
            raise
        record_now(self._engine, work.study_id, NOTIFIED, f"{facts.level}: {what}", version)
        log.info("study %s v%d: %s notified (%s)", work.study_instance_uid, version, notification.name,
                 facts.level)
