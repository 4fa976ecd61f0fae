"""`ainode route test`: the routing decision for files or a stored study, in words."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from sqlalchemy import select

from config.settings import Route, Settings
from node.network.scu import collect_files
from node.pipeline.completion import load_study_view
from node.pipeline.routing import SeriesView, StudyView, infer_jobs, region_note, route_study
from storage.db import open_database
from storage.header import InstanceHeader, InvalidInstance, read_file_header
from storage.models import Study


def views_from_files(path: Path, unusable: list[str] | None = None) -> list[StudyView]:
    """Group the DICOM files under ``path`` into studies and series; files the node
    would refuse (not DICOM, or without the UIDs it files them by) are left out, and
    listed in ``unusable`` ("name: why") when it is given."""
    series: dict[str, list[InstanceHeader]] = defaultdict(list)
    tilts: dict[str, float] = {}
    for file in collect_files([path]):
        try:
            header, _ts = read_file_header(file)
        except Exception as exc:  # noqa: BLE001 - routing would never see this file
            if unusable is not None:
                why = "not a DICOM file" if isinstance(exc, InvalidDicomError) else \
                    str(exc) if isinstance(exc, InvalidInstance) else f"cannot be read ({type(exc).__name__})"
                unusable.append(f"{file.name}: {why}")
            continue
        series[header.series_instance_uid].append(header)
        tilt = _gantry_tilt(file)
        if tilt:
            tilts[header.series_instance_uid] = max(tilts.get(header.series_instance_uid, 0.0), tilt, key=abs)
    studies: dict[str, list[SeriesView]] = defaultdict(list)
    descriptions: dict[str, str | None] = {}
    for uid, headers in series.items():
        first = headers[0]
        descriptions[first.study_instance_uid] = first.study_description
        thicknesses = sorted({h.slice_thickness for h in headers if h.slice_thickness is not None})
        studies[first.study_instance_uid].append(SeriesView(
            uid, first.modality, first.sop_class_uid, first.series_number, first.series_description,
            first.body_part_examined, first.slice_thickness, first.convolution_kernel,
            first.orientation, len({h.sop_instance_uid for h in headers}), None,
            (thicknesses[0], thicknesses[-1]) if thicknesses else None, tilts.get(uid),
        ))
    return [
        StudyView(uid, descriptions[uid], tuple(sorted(s, key=lambda v: (v.series_number or 0,
                                                                         v.series_instance_uid))))
        for uid, s in studies.items()
    ]


def _gantry_tilt(path: Path) -> float | None:
    try:
        value = dcmread(path, stop_before_pixels=True, specific_tags=["GantryDetectorTilt"]).get("GantryDetectorTilt")
        return float(value) if value not in (None, "") else None
    except Exception:  # noqa: BLE001 - the header was read already; the tilt is extra
        return None


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
    if s.thickness_range and s.thickness_range[0] != s.thickness_range[1]:
        thickness = f"{s.thickness_range[0]:g} to {s.thickness_range[1]:g} mm (varies)"
    tilt = f", gantry tilt {s.gantry_tilt:g} degrees" if s.gantry_tilt else ""
    return (f"series {s.series_number if s.series_number is not None else '-'} "
            f"{s.series_description or ''!r} {s.modality or '?'} {s.orientation or '?'} "
            f"{s.instance_count} images, {thickness}{tilt}, kernel {kernel} ({s.series_instance_uid})")


def explain(routes: Iterable[Route], study: StudyView) -> str:
    lines = [f"study {study.study_instance_uid} ({len(study.series)} series)"]
    for s in study.series:
        lines.append(f"  {_describe(s)}")
    return "\n".join(lines + decision_lines(routes, study))


def decision_lines(routes: Iterable[Route], study: StudyView) -> list[str]:
    """What each rule decides for the study and the jobs that follow, line by line."""
    lines: list[str] = []
    decisions = route_study(routes, study)
    for decision in decisions:
        route = decision.route
        if decision.matched:
            chosen = ", ".join(str(s.series_number) if s.series_number is not None else s.series_instance_uid
                               for s in decision.chosen)
            lines.append(f"rule {route.name!r} -> model {route.model}: MATCHED, takes series {chosen}"
                         f" (select = {route.select}, priority {route.priority})")
            for s in decision.chosen:
                note = region_note(route.match, study, s)
                if note:
                    lines.append(f"  series {s.series_number}: {note}")
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
    return lines
