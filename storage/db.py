"""Opening the database: engine set-up per dialect and migrations at start."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, FromClause, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def _sqlite_on_connect(busy_timeout_ms: int) -> Any:
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        # The driver must not open transactions itself: `_sqlite_begin` does.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a commit survives any process crash; after a power
        # loss the last commits may be missing, and start-up reconciliation
        # re-indexes their files, which were fsynced before the commit.
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cur.close()

    return on_connect


def _sqlite_begin(conn: Any) -> None:
    # Writers (see `writing`) take the write lock up front, so that two writers do
    # not both read and then fail to upgrade; readers begin deferred and never block.
    mode = "IMMEDIATE" if conn.get_execution_options().get("ainode_write") else "DEFERRED"
    conn.exec_driver_sql(f"BEGIN {mode}")


def writing(engine: Engine) -> Any:
    """A write transaction: ``with writing(engine) as conn: ...`` commits at the end.

    On SQLite it starts with BEGIN IMMEDIATE; elsewhere it is a plain transaction.
    """
    return engine.execution_options(ainode_write=True).begin()


@contextmanager
def driver_writing(engine: Engine) -> Iterator[Any]:
    """A write transaction on the driver's own connection, taken from the engine's
    pool: yields a DBAPI cursor, commits at the end, rolls back on an error. For the
    one hot path where SQLAlchemy's cost per statement matters (recording each received
    image). As with :func:`writing`, SQLite starts with BEGIN IMMEDIATE; driver errors
    come out as SQLAlchemy's exceptions (``OperationalError``...), and a connection the
    error shows broken is not given back to the pool."""
    dbapi = engine.dialect.loaded_dbapi
    connection = engine.raw_connection()
    cursor = None
    try:
        cursor = connection.cursor()
        if engine.dialect.name == "sqlite":
            cursor.execute("BEGIN IMMEDIATE")
        yield cursor
        connection.commit()
    except dbapi.Error as exc:
        broken = engine.dialect.is_disconnect(exc, connection.dbapi_connection, cursor)
        _roll_back(connection, dbapi)
        if broken:
            connection.invalidate(exc)
        raise DBAPIError.instance(None, None, exc, dbapi.Error, connection_invalidated=broken,
                                  dialect=engine.dialect) from exc
    except BaseException:
        _roll_back(connection, dbapi)
        raise
    finally:
        if cursor is not None:
            try:
                cursor.close()
            except dbapi.Error:
                pass
        connection.close()


def _roll_back(connection: Any, dbapi: Any) -> None:
    try:
        connection.rollback()
    except dbapi.Error:
        pass  # the pool resets (or discards) the connection when it comes back


def json_value(text: str | bytes | None) -> Any:
    """A JSON column read as text (``cast(column, Text)``) as its Python value; None
    for SQL NULL."""
    return None if text is None else _json_loads(text)


def _json_loads(text: str | bytes) -> Any:
    """JSON columns as Python values: orjson (several times faster than the standard
    library: a quality report reads 100,000 predictions' findings and profiles), the
    standard library for what orjson refuses (NaN or Infinity written by json.dumps)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def make_engine(url: str, busy_timeout_ms: int = 5000) -> Engine:
    """Create the engine for ``url``; SQLite gets WAL, a busy timeout and foreign keys."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"timeout": busy_timeout_ms / 1000, "check_same_thread": False},
            pool_size=32,
            max_overflow=32,
            json_deserializer=_json_loads,
        )
        event.listen(engine, "connect", _sqlite_on_connect(busy_timeout_ms))
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(url, pool_size=16, max_overflow=16, pool_pre_ping=True, json_deserializer=_json_loads)


def migrate(engine: Engine) -> None:
    """Apply every Alembic migration not yet applied (idempotent)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def open_database(url: str, busy_timeout_ms: int = 5000) -> Engine:
    """An engine on an up-to-date schema."""
    engine = make_engine(url, busy_timeout_ms)
    migrate(engine)
    return engine


def dialect_insert(bind: Connection, table: FromClause) -> Any:
    """An INSERT for ``bind``'s database that supports ``on_conflict_do_nothing``
    (SQLite and PostgreSQL both have it; the generic insert does not)."""
    dialect = postgresql if bind.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)
