"""The HL7 ORU^R01 a RIS receives, over MLLP to a real listener on loopback."""

from __future__ import annotations

import pytest

from ai.protocol import Assessment, Finding
from config.settings import Notification
from node.pipeline.notification import StudyFacts, oru_r01, send_mllp
from tests.listeners import MllpListener

pytestmark = pytest.mark.integration

EMPHYSEMA = (Finding("emphysema suspected", score=0.9, assessment=Assessment.PRESENT),)


def test_an_oru_r01_reaches_an_mllp_listener_and_is_acknowledged() -> None:
    listener = MllpListener()
    notification = Notification(name="ris", type="hl7", host="127.0.0.1", port=listener.port)
    facts = StudyFacts("1.2.3.4", "ACC|1", 1, "critical", "ct-chest: emphysema suspected (score 0.90)",
                       EMPHYSEMA, patient_id="P1", patient_name="Doe^Jane", birth_date="19500101", sex="F",
                       study_date="20260101", study_time="101500", modality="CT")
    message = oru_r01(facts, notification, control_id="AINODE-7", now=0)
    try:
        assert send_mllp("127.0.0.1", listener.port, message, 5) == "AA"
        [received] = listener.messages
        segments = {s.split("|")[0]: s.split("|") for s in received.strip("\r").split("\r")}
        assert segments["MSH"][8] == "ORU^R01^ORU_R01" and segments["MSH"][9] == "AINODE-7"
        assert segments["PID"][3] == "P1" and segments["PID"][5] == "Doe^Jane"
        assert segments["OBR"][3] == "ACC\\F\\1"  # the delimiter in the accession number escaped
        obx = [s.split("|") for s in received.strip("\r").split("\r") if s.startswith("OBX")]
        assert obx[0][5] == "CRITICAL" and obx[2][5] == "1.2.3.4" and obx[3][5] == "0.900" and obx[3][8] == "A"
        listener.answer = "AE"
        with pytest.raises(RuntimeError, match="the receiver answered AE"):
            send_mllp("127.0.0.1", listener.port, message, 5)
    finally:
        listener.shutdown()


def test_a_receiver_that_never_acknowledges_times_out() -> None:
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        message = oru_r01(StudyFacts("1.2.3.4", "A1", 1, "urgent", "r", ()),
                          Notification(name="ris", type="hl7", host="127.0.0.1", port=port), "C1", now=0)
        with pytest.raises(RuntimeError, match="did not acknowledge within 1 s"):
            send_mllp("127.0.0.1", port, message, 1)
