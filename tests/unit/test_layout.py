"""The shape of the code: imports point down (config <- storage <- ai <- node, and the
rooms of node in their order), no import circles, and job kinds, job states and study
states are named by their enums, not spelled out as strings."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from node.jobs.kinds import JobKind
from storage.states import JobState, StudyState

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("config", "storage", "ai", "node")
#: node's rooms, lowest first: a room imports only rooms below it (network and jobs
#: are both at the bottom and import neither each other nor anything above). quality
#: (metrics, references, drift) is read by the pipeline (case profiles, validation).
ROOMS = {"network": 0, "jobs": 0, "quality": 1, "pipeline": 2, "web": 3, "runner": 4}
#: Where the enums are defined, and so where their values are written out.
ENUM_MODULES = {"storage.states", "node.jobs.kinds"}
#: The same words in another sense.
OTHER_SENSES = {
    ("node/runner/cli.py", "send"): "the name of the `ainode send` command",
    ("node/web/api.py", "failed"): "a value of the API's delivery summary",
    ("node/runner/cli.py", "superseded"): "a field of `ainode predictions --json`",
    ("node/runner/serve.py", "quality"): "the id of the scheduler's entry that queues quality jobs",
    ("node/runner/quality_cli.py", "quality"): "the name of the `ainode quality` command",
    ("node/web/quality_api.py", "quality"): "the API's tag for its quality endpoints",
    ("node/runner/quality_cli.py", "failed"): "a study's outcome in a validation",
    ("node/quality/html_report.py", "failed"): "a study's outcome in a validation",
    ("node/network/pynetdicom_internals.py", "send"): "the name of a pynetdicom method the node overrides",
}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            if "versions" in parts:  # Alembic migrations are frozen history
                continue
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    """First-party modules ``path`` imports, anywhere in it (lazy imports count too)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if name.split(".")[0] in PACKAGES and name in MODULES:
                yield node.lineno, name


def _layer(module: str) -> tuple[int, int]:
    """(package, room): the room is -1 outside node; node's own modules (``python -m
    node``) stand above its rooms."""
    parts = module.split(".")
    top = PACKAGES.index(parts[0])
    if parts[0] != "node":
        return top, -1
    return top, ROOMS[parts[1]] if len(parts) > 1 and parts[1] in ROOMS else max(ROOMS.values()) + 1


def test_imports_only_point_down() -> None:
    upward = []
    for module, path in MODULES.items():
        top, room = _layer(module)
        for line, imported in _imports(path):
            other_top, other_room = _layer(imported)
            same_room = module.split(".")[:2] == imported.split(".")[:2]
            if other_top > top or (top == other_top == PACKAGES.index("node") and not same_room
                                   and other_room >= room):
                upward.append(f"{path.relative_to(REPO)}:{line} imports {imported}")
    assert upward == []


def test_there_is_no_import_circle() -> None:
    graph = {module: {imported for _, imported in _imports(path) if imported != module}
             for module, path in MODULES.items()}
    # A package's __init__ is imported by its own modules' imports: leave that edge out.
    graph = {m: {i for i in deps if not m.startswith(i + ".")} for m, deps in graph.items()}
    circles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for imported in sorted(graph.get(module, ())):
            if state.get(imported) == 1:
                circles.append(" -> ".join(path[path.index(imported):] + [imported]))
            elif imported not in state:
                visit(imported, [*path, imported])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert circles == []


def test_job_kinds_and_states_are_named_by_their_enums() -> None:
    spelled = {str(v) for v in (*JobKind, *JobState, *StudyState)}
    found = []
    for module, path in MODULES.items():
        if module in ENUM_MODULES:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in spelled \
                    and (str(path.relative_to(REPO)), node.value) not in OTHER_SENSES:
                found.append(f"{path.relative_to(REPO)}:{node.lineno} {node.value!r}")
    assert found == []


def test_storage_ai_and_config_never_import_node() -> None:
    found = [f"{path.relative_to(REPO)}:{line} imports {imported}"
             for module, path in MODULES.items() if not module.startswith("node")
             for line, imported in _imports(path) if imported.startswith("node")]
    assert found == []
