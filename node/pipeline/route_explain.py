"""`ainode route test`: the routing decision for files or a stored study, in words."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import select

from config.settings import Route, Settings
from node.network.scu import collect_files
from node.pipeline.completion import load_study_view
from node.pipeline.routing import SeriesView, StudyView, infer_jobs, route_study
from storage.db import open_database
from storage.header import InstanceHeader, read_file_header
from storage.models import Study


def views_from_files(path: Path) -> list[StudyView]:
    """Group the DICOM files under ``path`` into studies and series."""
    series: dict[str, list[InstanceHeader]] = defaultdict(list)
    for file in collect_files([path]):
        try:
            header, _ts = read_file_header(file)
        except Exception:
            continue  # not DICOM, or unusable: routing would never see it
        series[header.series_instance_uid].append(header)
    studies: dict[str, list[SeriesView]] = defaultdict(list)
    descriptions: dict[str, str | None] = {}
    for uid, headers in series.items():
        first = headers[0]
        descriptions[first.study_instance_uid] = first.study_description
        studies[first.study_instance_uid].append(SeriesView(
            uid, first.modality, first.sop_class_uid, first.series_number, first.series_description,
            first.body_part_examined, first.slice_thickness, first.convolution_kernel,
            first.orientation, len({h.sop_instance_uid for h in headers}), None,
        ))
    return [
        StudyView(uid, descriptions[uid], tuple(sorted(s, key=lambda v: (v.series_number or 0,
                                                                         v.series_instance_uid))))
        for uid, s in studies.items()
    ]


def views_from_database(settings: Settings, study_uid: str) -> list[StudyView]:
    engine = open_database(settings.effective_database_url, settings.db_busy_timeout_ms)
    try:
        with engine.connect() as conn:
            study_id = conn.execute(
                select(Study.id).where(Study.study_instance_uid == study_uid)
            ).scalar_one_or_none()
            return [] if study_id is None else [load_study_view(conn, study_id)]
    finally:
        engine.dispose()


def _describe(s: SeriesView) -> str:
    kernel = s.convolution_kernel or "?"
    thickness = f"{s.slice_thickness:g} mm" if s.slice_thickness is not None else "? mm"
    return (f"series {s.series_number if s.series_number is not None else '-'} "
            f"{s.series_description or ''!r} {s.modality or '?'} {s.orientation or '?'} "
            f"{s.instance_count} images, {thickness}, kernel {kernel} ({s.series_instance_uid})")


def explain(routes: Iterable[Route], study: StudyView) -> str:
    lines = [f"study {study.study_instance_uid} ({len(study.series)} series)"]
    for s in study.series:
        lines.append(f"  {_describe(s)}")
    decisions = route_study(routes, study)
    for decision in decisions:
        route = decision.route
        if decision.matched:
            chosen = ", ".join(str(s.series_number) if s.series_number is not None else s.series_instance_uid
                               for s in decision.chosen)
            lines.append(f"rule {route.name!r} -> model {route.model}: MATCHED, takes series {chosen}"
                         f" (select = {route.select}, priority {route.priority})")
            for s in decision.matching:
                if s not in decision.chosen:
                    lines.append(f"  series {s.series_number}: matches, but {route.select} prefers "
                                 f"series {chosen} (this one: kernel {s.convolution_kernel or '?'}, "
                                 f"{s.slice_thickness} mm, {s.instance_count} images)")
        else:
            lines.append(f"rule {route.name!r} -> model {route.model}: no series matches")
        for uid, reasons in decision.rejected.items():
            number = next((s.series_number for s in study.series if s.series_instance_uid == uid), uid)
            lines.append(f"  series {number}: " + "; ".join(reasons))
    numbers = {s.series_instance_uid: str(s.series_number if s.series_number is not None else s.series_instance_uid)
               for s in study.series}
    for payload, _ in infer_jobs(decisions):
        lines.append(f"job: {payload.model} on series {', '.join(numbers[u] for u in payload.series)} "
                     f"(route {payload.route}; results to {', '.join(payload.destinations) or 'no destination'})")
    return "\n".join(lines)
