"""Routing: which series of a completed study go to which model. Pure functions of
data, so that `ainode route test` and the completion sweep decide identically."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ai.kernels import kernel_sharpness
from config.settings import Route, SeriesMatch
from node.jobs.kinds import InferPayload
from node.pipeline.body_region import body_region


@dataclass(frozen=True)
class SeriesView:
    """What routing knows of a series."""

    series_instance_uid: str
    modality: str | None
    sop_class_uid: str | None
    series_number: int | None
    series_description: str | None
    body_part_examined: str | None
    slice_thickness: float | None
    convolution_kernel: str | None
    orientation: str | None
    instance_count: int
    calling_ae_title: str | None
    #: Read from the files by `ainode route test` (the database keeps the first image's only).
    thickness_range: tuple[float, float] | None = None
    gantry_tilt: float | None = None  # degrees, Gantry/Detector Tilt (0018,1120)


@dataclass(frozen=True)
class StudyView:
    study_instance_uid: str
    study_description: str | None
    series: tuple[SeriesView, ...]


@dataclass
class RouteDecision:
    """One rule applied to one study: the series it takes, and why others were not."""

    route: Route
    chosen: list[SeriesView] = field(default_factory=list)
    matching: list[SeriesView] = field(default_factory=list)
    rejected: dict[str, list[str]] = field(default_factory=dict)  # series UID -> reasons

    @property
    def matched(self) -> bool:
        return bool(self.chosen)


def _search(pattern: str, value: str | None) -> bool:
    return value is not None and re.search(pattern, value, re.IGNORECASE) is not None


def mismatches(match: SeriesMatch, study: StudyView, series: SeriesView) -> list[str]:
    """Every condition of ``match`` that ``series`` fails, in words; empty if it matches."""
    why: list[str] = []
    if match.modality and (series.modality or "").upper() not in {m.upper() for m in match.modality}:
        why.append(f"modality {series.modality or 'absent'} not in {match.modality}")
    if match.sop_class and series.sop_class_uid not in match.sop_class:
        why.append(f"SOP class {series.sop_class_uid} not listed")
    if match.body_part and not _search(match.body_part, series.body_part_examined):
        why.append(f"body part {series.body_part_examined or 'absent'} !~ /{match.body_part}/")
    if match.study_description and not _search(match.study_description, study.study_description):
        why.append(f"study description !~ /{match.study_description}/")
    if match.series_description and not _search(match.series_description, series.series_description):
        why.append(f"series description {series.series_description!r} !~ /{match.series_description}/")
    if series.instance_count < match.min_instances:
        why.append(f"{series.instance_count} instances < {match.min_instances}")
    thickness = series.slice_thickness
    if match.slice_thickness_min is not None and (thickness is None or thickness < match.slice_thickness_min):
        why.append(f"slice thickness {thickness} < {match.slice_thickness_min}")
    thickest = series.thickness_range[1] if series.thickness_range else thickness
    if match.slice_thickness_max is not None and (thickest is None or thickest > match.slice_thickness_max):
        why.append(f"slice thickness {thickest} > {match.slice_thickness_max}")
    if match.orientation and series.orientation not in match.orientation:
        why.append(f"orientation {series.orientation or 'unknown'} not in {match.orientation}")
    if match.calling_ae and series.calling_ae_title not in match.calling_ae:
        why.append(f"sent by {series.calling_ae_title or 'unknown AE'}, not {match.calling_ae}")
    if match.region:
        region = body_region(series.body_part_examined, series.series_description, study.study_description)
        if region is not None and not region.regions & set(match.region):
            why.append(f"body region {region.describe()} not in {match.region}")
    return why


def region_note(match: SeriesMatch, study: StudyView, series: SeriesView) -> str | None:
    """For a matching series: where its body region was read, or that its header
    names none (then the model's anatomy check decides)."""
    if not match.region:
        return None
    region = body_region(series.body_part_examined, series.series_description, study.study_description)
    if region is None:
        return "its header names no body region: the model checks the anatomy itself"
    return f"body region {region.describe()}"


def _choose(select: str, candidates: Sequence[SeriesView]) -> list[SeriesView]:
    if not candidates or select == "all":
        return list(candidates)
    def thick(s: SeriesView) -> float:
        return s.slice_thickness if s.slice_thickness is not None else 1e9

    def key(s: SeriesView) -> tuple[float, ...]:
        if select == "smoothest_kernel":
            rank = kernel_sharpness(s.convolution_kernel)
            # an unknown kernel after the known standard ones, before the sharp ones
            return (4.0 if rank is None else rank, thick(s), -s.instance_count)
        if select == "thinnest":
            return (thick(s), -s.instance_count)
        return (-s.instance_count, thick(s))  # most_instances

    return [min(candidates, key=lambda s: (key(s), s.series_instance_uid))]


def route_study(routes: Iterable[Route], study: StudyView) -> list[RouteDecision]:
    """Apply every enabled rule to the study."""
    decisions = []
    for route in routes:
        if not route.enabled:
            continue
        decision = RouteDecision(route)
        for series in study.series:
            why = mismatches(route.match, study, series)
            if why:
                decision.rejected[series.series_instance_uid] = why
            else:
                decision.matching.append(series)
        decision.chosen = _choose(route.select, decision.matching)
        decisions.append(decision)
    return decisions


def expected_series_present(route: Route, study: StudyView) -> bool:
    """True when the route expects series and a series matches each expectation."""
    if not route.expect_series:
        return False
    return all(
        any(not mismatches(expected, study, s) for s in study.series) for expected in route.expect_series
    )


def infer_jobs(decisions: Iterable[RouteDecision]) -> list[tuple[InferPayload, int]]:
    """The infer jobs the matched decisions make, each with its route priority.

    One job per model and set of chosen series: routes that send different series to
    one model get a job each; routes that choose the same series for the same model
    share one (the model runs once; ``route`` names every route, ``destinations`` is
    their union, the priority their highest). The job is a shadow one only when every
    route of it is: a model whose results a clinical route uses is clinical.
    """
    grouped: dict[tuple[str, tuple[str, ...]], list[Route]] = {}
    for decision in decisions:
        if decision.matched:
            series = tuple(s.series_instance_uid for s in decision.chosen)
            grouped.setdefault((decision.route.model, series), []).append(decision.route)
    jobs = []
    for (model, series), routes in grouped.items():
        destinations = tuple(dict.fromkeys(d for r in routes for d in r.destinations))
        jobs.append((InferPayload(model, ", ".join(r.name for r in routes), series, destinations,
                                  shadow=all(r.shadow for r in routes)),
                     max(r.priority for r in routes)))
    return jobs
