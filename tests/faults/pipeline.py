"""What the fault-injection tests share: a node configured to deliver to an archive
quickly, fresh copies of a phantom study, a sender that records what was
acknowledged, and read-only looks into the node's SQLite database."""

from __future__ import annotations

import copy
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from tests.conftest import Node
from tests.integration.scu import associate
from tests.phantoms import chest_phantom, write_phantom_series
from tests.synthetic import TEST_UID_ROOT

CONFIG = """\
quiet_period_s = 1.5
completion_sweep_s = 0.5
job_lease_s = 2
job_retry_base_delay_s = 0.5
job_retry_max_delay_s = 2
job_max_attempts = 50
listener_processes = 1
api_port = 0

[[destinations]]
name = "archive"
ae_title = "{ae}"
host = "127.0.0.1"
port = {port}

[[routes]]
name = "ct-chest"
model = "ct-chest"
destinations = ["archive"]
[routes.match]
modality = ["CT"]
min_instances = 40
"""


@dataclass
class Trial:
    """One study as a modality sends it, and what the node acknowledged."""

    datasets: list[Dataset]
    acknowledged: set[str] = field(default_factory=set)
    sending: bool = True


def fresh_study(template: list[Dataset]) -> list[Dataset]:
    """The phantom series under new study, series and instance UIDs."""
    study, series, frame = (generate_uid(TEST_UID_ROOT) for _ in range(3))
    copies = []
    for source in template:
        ds = copy.deepcopy(source)  # Dataset.copy() would share the elements
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(TEST_UID_ROOT)
        copies.append(ds)
    return copies


def send(port: int, trial: Trial, datasets: list[Dataset]) -> None:
    """C-STORE one by one as a modality does; stop at the first failure."""
    try:
        assoc = associate(port, {(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))
                                 for ds in datasets}, calling_ae="CT01")
        if not assoc.is_established:
            return
        for ds in datasets:
            status = assoc.send_c_store(ds)
            if not status or int(status.Status) != 0:
                break
            trial.acknowledged.add(str(ds.SOPInstanceUID))
        assoc.release()
    except Exception:  # the node died under the sender: what it acknowledged is what counts
        pass
    finally:
        trial.sending = False


def database(node: Node) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{node.data_dir / 'ainode.db'}?mode=ro", uri=True, timeout=30)


def check_acknowledged(node: Node, trials: list[Trial]) -> int:
    """Every acknowledged instance is recorded, its file is there and holds its pixels."""
    with database(node) as db:
        paths = dict(db.execute("SELECT sop_instance_uid, path FROM instances"))
    checked = 0
    for trial in trials:
        for ds in trial.datasets:
            uid = str(ds.SOPInstanceUID)
            if uid not in trial.acknowledged:
                continue
            assert uid in paths, f"acknowledged instance {uid} is not in the database"
            stored = dcmread(node.data_dir / paths[uid])
            assert stored.SOPInstanceUID == uid
            assert np.array_equal(stored.pixel_array, ds.pixel_array), f"{uid} is damaged"
            checked += 1
    return checked


def phantom_template(folder: Path) -> list[Dataset]:
    """A small chest phantom series (48 slices of 128 x 128) that ct-chest accepts."""
    phantom = chest_phantom(slices=48, size=128, slice_mm=5.0, pixel_mm=2.6)
    return [dcmread(p) for p in write_phantom_series(phantom, folder)]


def job_states(node: Node) -> dict[str, int]:
    with database(node) as db:
        return dict(db.execute("SELECT state, count(*) FROM jobs GROUP BY state"))


def settled(node: Node) -> bool:
    """Every job has finished (succeeded, dead, or superseded) and every study has settled (done,
    failed or not applicable): a study reopened by a resent image and not yet complete
    again still has work to come."""
    states = job_states(node)
    with database(node) as db:
        studies = {state for (state,) in db.execute("SELECT DISTINCT state FROM studies")}
    return bool(states) and set(states) <= {"succeeded", "dead", "superseded"} \
        and studies <= {"done", "failed", "not_applicable"}


def result_uids(node: Node) -> dict[str, str]:
    """SOP Instance UID -> SOP Class UID of every result object the node made."""
    with database(node) as db:
        return dict(db.execute("SELECT sop_instance_uid, sop_class_uid FROM result_objects"))
