"""The same storage code on a real PostgreSQL server: migrations, ingest, reconcile,
and `ainode serve` receiving a study into PostgreSQL."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from storage.db import open_database
from storage.files import FileStore
from storage.header import header_from_dataset
from storage.ingest import StoredFile, record_instance
from storage.inventory import inventory
from storage.reconcile import reconcile
from tests.conftest import Node, peer_env
from tests.synthetic import TEST_UID_ROOT, ct_slice, write_ct_study

pytestmark = pytest.mark.integration


def test_ingest_and_reconcile_on_postgres(fresh_postgres_url: str, tmp_path: Path) -> None:
    engine = open_database(fresh_postgres_url)
    open_database(fresh_postgres_url)  # migrations are idempotent
    study, s1, s2, sop = (generate_uid(TEST_UID_ROOT) for _ in range(4))
    h1 = header_from_dataset(ct_slice(study, s1, 0, sop_uid=sop))
    record_instance(engine, h1, StoredFile("a.dcm", 10, "1.2.840.10008.1.2", "CT"))
    record_instance(engine, h1, StoredFile("a.dcm", 11, "1.2.840.10008.1.2", "CT"))
    assert inventory(engine) == {"studies": 1, "series": 1, "instances": 1, "bytes": 11}
    h2 = header_from_dataset(ct_slice(study, s2, 0, sop_uid=sop))
    assert record_instance(engine, h2, StoredFile("b.dcm", 5, "1.2.840.10008.1.2", "CT")) == "a.dcm"

    store = FileStore(tmp_path / "data")
    store.prepare()
    report = reconcile(store, engine)  # b.dcm is not on disk: its row goes
    assert report.rows_dropped == 1
    assert inventory(engine) == {"studies": 0, "series": 0, "instances": 0, "bytes": 0}
    engine.dispose()


def test_serve_receives_into_postgres(node_factory, fresh_postgres_url: str, storescu: str,
                                      tmp_path: Path) -> None:
    study = tmp_path / "study"
    write_ct_study(study, series=2, slices=10)
    node: Node = node_factory(f'database_url = "{fresh_postgres_url}"\n').start()
    sent = subprocess.run(
        [storescu, "-aec", "AINODE", "+sd", "+r", "127.0.0.1", str(node.port), str(study)],
        capture_output=True, text=True, env=peer_env(), timeout=120,
    )
    assert sent.returncode == 0, sent.stderr
    counts = json.loads(node.run("status", "--json").stdout)
    assert (counts["studies"], counts["series"], counts["instances"]) == (1, 2, 20)
    assert "postgresql+psycopg://" in node.log()
    assert not (node.data_dir / "ainode.db").exists()


def test_a_quality_cohort_reads_the_same_on_postgres_as_on_sqlite(fresh_postgres_url: str, tmp_path: Path) -> None:
    """The cohort reader takes JSON columns as text (cast) and joins references on the
    model: both depend on the database's dialect."""
    from node.quality.cohort import load_cases
    from tests.quality_rows import PlannedCase, profile, record_cases

    planned = [PlannedCase(1_700_000_000.0 + i, profile(manufacturer=("GE", "Siemens")[i % 2], sex="MF"[i % 2]),
                           called=(True, False, None)[i % 3], score=0.1 * (i % 10), truth=(i % 4 == 0) or None,
                           comparison=(0.8, 11.0, 10.0) if i % 5 == 0 else None,
                           feedback=("disagree", "dr.reader", "missed") if i % 7 == 0 else None)
               for i in range(40)]
    read = {}
    for name, url in (("sqlite", f"sqlite:///{tmp_path / 'ainode.db'}"), ("postgres", fresh_postgres_url)):
        engine = open_database(url)
        record_cases(engine, "cohort-model", planned)
        with engine.connect() as conn:
            read[name] = load_cases(conn, "cohort-model")
        engine.dispose()
    sqlite, postgres = read["sqlite"], read["postgres"]
    assert len(postgres) == 40
    assert [(c.profile, c.findings, c.segments, c.measurements, c.feedback) for c in postgres] == \
        [(c.profile, c.findings, c.segments, c.measurements, c.feedback) for c in sqlite]
    assert sum(1 for c in postgres if c.segments) == 8 and sum(1 for c in postgres if c.feedback) == 6
    assert {c.profile["manufacturer"] for c in postgres} == {"GE", "Siemens"}
