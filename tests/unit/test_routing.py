from __future__ import annotations

from datetime import UTC, datetime, timedelta

from config.settings import Route, SeriesMatch, default_routes
from node.pipeline.completion import CompletionPolicy, completion_reason
from node.pipeline.routing import SeriesView, StudyView, infer_jobs, kernel_sharpness, route_study


def _series(uid: str, kernel: str | None = "B", thickness: float | None = 5.0, n: int = 64,
            modality: str = "CT", orientation: str = "AXIAL", description: str = "5mm",
            body_part: str | None = None) -> SeriesView:
    return SeriesView(uid, modality, "1.2.840.10008.5.1.4.1.1.2", 1, description, body_part, thickness,
                      kernel, orientation, n, "CT01")


CHEST = StudyView("1.2.3", "Chest", (_series("lung", kernel="L"), _series("soft", kernel="B"),
                                      _series("scout", thickness=None, n=2)))


def test_builtin_route_takes_the_smoothest_kernel_series() -> None:
    [decision] = route_study(default_routes(), CHEST)
    assert [s.series_instance_uid for s in decision.chosen] == ["soft"]
    assert [s.series_instance_uid for s in decision.matching] == ["lung", "soft"]
    assert decision.rejected["scout"] == ["2 instances < 20", "slice thickness None > 10.0"]


def test_builtin_route_takes_an_ordinary_thick_chest_ct() -> None:
    study = StudyView("1", "CT Thorax", (_series("thick", kernel="B31f", thickness=8.0, n=30),))
    [decision] = route_study(default_routes(), study)
    assert [s.series_instance_uid for s in decision.chosen] == ["thick"]


def test_builtin_route_leaves_head_and_abdomen_cts_alone() -> None:
    head = StudyView("1", "CT Schädel nativ", (_series("head", thickness=1.0, n=200),))
    abdomen = StudyView("2", "CT", (_series("abd", thickness=1.0, n=300, body_part="ABDOMEN"),))
    brain = StudyView("3", "", (_series("b", thickness=0.6, n=250, description="Brain 0.6 H31s"),))
    for study in (head, abdomen, brain):
        [decision] = route_study(default_routes(), study)
        assert not decision.matched
    [decision] = route_study(default_routes(), abdomen)
    assert decision.rejected["abd"] == [
        "body region ABDOMEN (from Body Part Examined 'ABDOMEN') not in ['CHEST']"]


def test_a_chest_named_anywhere_or_nowhere_is_taken() -> None:
    cases = [
        StudyView("1", "CT CHEST ABDOMEN PELVIS", (_series("cap", body_part="CHESTABDPELVIS"),)),
        StudyView("2", "Polytrauma", (_series("wb", description="Ganzkörper 1.5 B30f"),)),
        StudyView("3", "", (_series("thx", description="Thx 1.0 B31f"),)),
        StudyView("4", "CT TORAX", (_series("es"),)),
        StudyView("5", "", (_series("anon", description=""),)),  # anonymised: the model checks
    ]
    for study in cases:
        [decision] = route_study(default_routes(), study)
        assert decision.matched, study.study_description


def test_kernel_sharpness_orders_vendors_kernels() -> None:
    assert kernel_sharpness("B30f") < kernel_sharpness("B70f")
    assert kernel_sharpness("STANDARD") < kernel_sharpness("LUNG")
    assert kernel_sharpness("B") < kernel_sharpness("L")
    assert kernel_sharpness("FC03") < kernel_sharpness("FC51")


def test_selection_modes_and_reasons() -> None:
    study = StudyView("1", "CT abdomen", (_series("thin", thickness=1.0, n=300),
                                          _series("thick", thickness=5.0, n=80),
                                          _series("mr", modality="MR")))
    thinnest = Route(name="t", model="m", match=SeriesMatch(modality=["CT"]), select="thinnest")
    everything = Route(name="a", model="m2", match=SeriesMatch(modality=["CT"]), select="all")
    described = Route(name="d", model="m3", match=SeriesMatch(study_description="chest"))
    t, a, d = route_study([thinnest, everything, described], study)
    assert [s.series_instance_uid for s in t.chosen] == ["thin"]
    assert [s.series_instance_uid for s in a.chosen] == ["thin", "thick"]
    assert t.rejected["mr"] == ["modality MR not in ['CT']"]
    assert not d.matched and d.rejected["thin"] == ["study description !~ /chest/"]


NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def test_completion_quiet_expected_and_forced() -> None:
    policy = CompletionPolicy(30, 3600, tuple(default_routes()))
    first = NOW - timedelta(seconds=100)
    assert completion_reason(policy, CHEST, first, NOW - timedelta(seconds=29), NOW) is None
    assert completion_reason(policy, CHEST, first, NOW - timedelta(seconds=30), NOW) == "quiet"
    busy_since = NOW - timedelta(hours=2)
    assert completion_reason(policy, CHEST, busy_since, NOW, NOW) == "forced"

    expecting = Route(name="two", model="m", expect_series=[
        SeriesMatch(modality=["CT"], min_instances=64, series_description="5mm"),
        SeriesMatch(modality=["CT"], min_instances=2, slice_thickness_max=1.0)])
    policy = CompletionPolicy(30, 3600, (expecting,))
    assert completion_reason(policy, CHEST, first, NOW, NOW) is None  # no thin series yet
    with_thin = StudyView("1.2.3", "Chest", (*CHEST.series, _series("thin", thickness=1.0, n=3)))
    assert completion_reason(policy, with_thin, first, NOW, NOW) == "expected-series"


def test_route_quiet_period_overrides_the_default() -> None:
    fast = Route(name="fast", model="m", match=SeriesMatch(modality=["CT"]), quiet_period_s=5)
    policy = CompletionPolicy(30, 3600, (fast,))
    assert completion_reason(policy, CHEST, NOW - timedelta(seconds=60), NOW - timedelta(seconds=6), NOW) == "quiet"


def test_after_a_restart_the_quiet_period_counts_from_the_restart() -> None:
    # Images in flight at the restart were not acknowledged: their senders send them
    # again, so a study quiet since before the restart waits a full period after it.
    restarted = NOW - timedelta(seconds=5)
    policy = CompletionPolicy(30, 3600, tuple(default_routes()), counting_from=restarted)
    last = NOW - timedelta(seconds=300)
    assert completion_reason(policy, CHEST, last, last, NOW) is None
    assert completion_reason(policy, CHEST, last, last, restarted + timedelta(seconds=30)) == "quiet"
    assert completion_reason(CompletionPolicy(30, 3600, tuple(default_routes())), CHEST, last, last, NOW) == "quiet"


def test_two_routes_to_one_model_on_different_series_make_two_jobs() -> None:
    study = StudyView("1.2.3", "Chest", (_series("thin", thickness=1.0, n=300), _series("thick", thickness=5.0)))
    thin = Route(name="thin", model="ct-chest", match=SeriesMatch(slice_thickness_max=2.0), destinations=["pacs"])
    thick = Route(name="thick", model="ct-chest", match=SeriesMatch(slice_thickness_min=4.0),
                  destinations=["research"])
    same = Route(name="again", model="ct-chest", match=SeriesMatch(slice_thickness_max=2.0), priority=5,
                 destinations=["pacs", "viewer"])
    jobs = infer_jobs(route_study([thin, thick, same], study))
    assert [(p.route, p.series, p.destinations, priority) for p, priority in jobs] == [
        ("thin, again", ("thin",), ("pacs", "viewer"), 5),  # the same series: the model runs once
        ("thick", ("thick",), ("research",), 0),
    ]


def test_a_job_is_shadow_only_when_every_route_of_it_is() -> None:
    study = StudyView("1.2.3", "Chest", (_series("thin", thickness=1.0, n=300), _series("thick", thickness=5.0)))
    trial = Route(name="trial", model="ct-chest", match=SeriesMatch(slice_thickness_min=4.0), shadow=True,
                  destinations=["research"])
    clinical = Route(name="clinical", model="ct-chest", match=SeriesMatch(slice_thickness_max=2.0),
                     destinations=["pacs"])
    also_trial = Route(name="also", model="ct-chest", match=SeriesMatch(slice_thickness_max=2.0), shadow=True)
    jobs = infer_jobs(route_study([trial, clinical, also_trial], study))
    # The thin series' results are used clinically: that job is clinical.
    assert [(p.route, p.shadow) for p, _ in jobs] == [("trial", True), ("clinical, also", False)]


def test_a_shadow_route_cannot_send_to_a_clinical_destination() -> None:
    import pytest
    from pydantic import ValidationError

    from config.settings import Settings

    destinations = [{"name": "pacs", "ae_title": "PACS", "host": "10.0.0.5", "port": 104},
                    {"name": "lab", "ae_title": "LAB", "host": "10.0.0.6", "port": 104, "purpose": "research"}]
    route = {"name": "trial", "model": "ct-chest", "shadow": True}
    with pytest.raises(ValidationError, match="shadow route and sends to 'pacs', a clinical destination"):
        Settings(destinations=destinations, routes=[{**route, "destinations": ["pacs"]}])
    ok = Settings(destinations=destinations, routes=[{**route, "destinations": ["lab"]}])
    assert ok.routes[0].shadow
