"""Database tables for what the node has received: studies, series and instances.

Counts and sizes are not stored: they are computed from the instance rows
(``column_property``), so a resent or reconciled instance can never leave them wrong.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, ForeignKey, Integer, String, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, column_property, mapped_column, relationship


class Base(DeclarativeBase):
    pass


UID = String(64)


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    study_date: Mapped[str | None] = mapped_column(String(8))
    study_description: Mapped[str | None] = mapped_column(String(64))
    accession_number: Mapped[str | None] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), default="receiving")
    first_received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)

    series: Mapped[list[Series]] = relationship(back_populates="study")


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    series_number: Mapped[int | None] = mapped_column(Integer)
    series_description: Mapped[str | None] = mapped_column(String(64))
    body_part_examined: Mapped[str | None] = mapped_column(String(16))
    calling_ae_title: Mapped[str | None] = mapped_column(String(16))
    first_received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    instance_number: Mapped[int | None] = mapped_column(Integer)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    path: Mapped[str] = mapped_column(String(400), unique=True)
    calling_ae_title: Mapped[str | None] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    series: Mapped[Series] = relationship(back_populates="instances")


Series.instance_count = column_property(  # type: ignore[attr-defined]
    select(func.count(Instance.id)).where(Instance.series_id == Series.id).scalar_subquery()
)
Series.total_bytes = column_property(  # type: ignore[attr-defined]
    select(func.coalesce(func.sum(Instance.size_bytes), 0))
    .where(Instance.series_id == Series.id)
    .scalar_subquery()
)
Study.series_count = column_property(  # type: ignore[attr-defined]
    select(func.count(Series.id)).where(Series.study_id == Study.id).scalar_subquery()
)
Study.instance_count = column_property(  # type: ignore[attr-defined]
    select(func.count(Instance.id))
    .join(Series, Instance.series_id == Series.id)
    .where(Series.study_id == Study.id)
    .scalar_subquery()
)
Study.total_bytes = column_property(  # type: ignore[attr-defined]
    select(func.coalesce(func.sum(Instance.size_bytes), 0))
    .join(Series, Instance.series_id == Series.id)
    .where(Series.study_id == Study.id)
    .scalar_subquery()
)
