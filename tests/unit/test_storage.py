"""Recording and reconciliation on a real SQLite database."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from storage.db import open_database
from storage.files import FileStore
from storage.header import header_from_dataset
from storage.ingest import StoredFile, record_instance
from storage.inventory import inventory
from storage.models import Series, Study
from storage.reconcile import reconcile
from tests.synthetic import TEST_UID_ROOT, ct_slice


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return open_database(f"sqlite:///{tmp_path / 'db.sqlite'}")


def test_migrations_are_idempotent(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    open_database(url)
    engine = open_database(url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_resend_counts_once_and_moves_between_series(engine: Engine) -> None:
    study, s1, s2, sop = (generate_uid(TEST_UID_ROOT) for _ in range(4))
    h1 = header_from_dataset(ct_slice(study, s1, 0, sop_uid=sop))
    assert record_instance(engine, h1, StoredFile("a.dcm", 10, "1.2.840.10008.1.2", "CT")) is None
    assert record_instance(engine, h1, StoredFile("a.dcm", 12, "1.2.840.10008.1.2", "CT")) is None
    assert inventory(engine) == {"studies": 1, "series": 1, "instances": 1, "bytes": 12}
    h2 = header_from_dataset(ct_slice(study, s2, 0, sop_uid=sop))
    assert record_instance(engine, h2, StoredFile("b.dcm", 5, "1.2.840.10008.1.2", "CT")) == "a.dcm"
    with Session(engine) as session:
        st = session.scalars(select(Study)).one()
        assert (st.instance_count, st.series_count, st.total_bytes) == (1, 2, 5)
        counts = {s.series_instance_uid: s.instance_count for s in session.scalars(select(Series))}
        assert counts == {s1: 0, s2: 1}


def test_reconcile_indexes_orphans_and_drops_rows_without_files(tmp_path: Path, engine: Engine) -> None:
    store = FileStore(tmp_path / "data")
    store.prepare()
    study, series = generate_uid(TEST_UID_ROOT), generate_uid(TEST_UID_ROOT)
    orphan = ct_slice(study, series, 0)
    rel = store.relative_path(study, series, orphan.SOPInstanceUID)
    store.absolute(rel).parent.mkdir(parents=True)
    orphan.save_as(store.absolute(rel), enforce_file_format=True)
    ghost = header_from_dataset(ct_slice(study, generate_uid(TEST_UID_ROOT), 1))
    record_instance(engine, ghost, StoredFile("studies/gone.dcm", 1, "1.2.840.10008.1.2", None))

    report = reconcile(store, engine)
    assert (report.files_indexed, report.rows_dropped) == (1, 1)
    assert inventory(engine)["instances"] == 1
    assert inventory(engine)["series"] == 1  # the ghost's empty series is gone
    assert reconcile(store, engine).files_indexed == 0


def _rows(engine: Engine) -> list[tuple[object, ...]]:
    """Every study, series and instance row, as the database holds them."""
    with engine.connect() as conn:
        return [tuple(row) for table in ("studies", "series", "instances")
                for row in conn.exec_driver_sql(f"SELECT * FROM {table} ORDER BY id")]


def test_the_drivers_path_writes_what_sqlalchemys_writes(tmp_path: Path) -> None:
    """Images are recorded on the driver's connection; a reference SEG (with work
    queued in the same transaction) through SQLAlchemy: the rows must not differ."""
    from datetime import UTC, datetime

    study, series = generate_uid(TEST_UID_ROOT), generate_uid(TEST_UID_ROOT)
    ds = ct_slice(study, series, 3, series_number=4)
    ds.StudyDescription, ds.AccessionNumber, ds.ConvolutionKernel = "CT CHEST", "A1", ["B30f", "HEAD"]
    header = header_from_dataset(ds)
    now = datetime(2026, 12, 5, 10, 30, 1, 250000, tzinfo=UTC)
    rows = []
    for name, also in (("driver", None), ("sqlalchemy", lambda conn: None)):
        engine = open_database(f"sqlite:///{tmp_path / name}.sqlite")
        for size in (10, 12):  # a resend updates the rows
            record_instance(engine, header, StoredFile("a.dcm", size, "1.2.840.10008.1.2", "CT01"),
                            now=now, also=also)
        rows.append(_rows(engine))
    assert rows[0] == rows[1]
    assert len(rows[0]) == 3 and "2026-12-05 10:30:01.250000" in rows[0][0]


def test_a_locked_database_is_an_operational_error_on_the_drivers_path(tmp_path: Path, engine: Engine) -> None:
    """The listener retries OperationalError (a writer holding SQLite's lock): the
    driver's error must come out as SQLAlchemy's, and the pool must stay usable."""
    from sqlalchemy.exc import OperationalError

    from storage.db import make_engine, writing

    impatient = make_engine(str(engine.url), busy_timeout_ms=50)
    header = header_from_dataset(ct_slice(generate_uid(TEST_UID_ROOT), generate_uid(TEST_UID_ROOT), 0))
    with writing(engine):  # BEGIN IMMEDIATE: holds the write lock
        with pytest.raises(OperationalError, match="locked"):
            record_instance(impatient, header, StoredFile("a.dcm", 1, "1.2.840.10008.1.2", None))
    record_instance(impatient, header, StoredFile("a.dcm", 1, "1.2.840.10008.1.2", None))
    assert inventory(engine)["instances"] == 1
