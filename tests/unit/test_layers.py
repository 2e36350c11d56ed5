"""The layers hold: the method (``tagpr/`` outside ``tagpr/jobs/``) imports no Ray, no Ray role, no
service and no job, anywhere in a module (function-level imports included); the services import
no Ray role; the command line's modules import each other one way (entry point and jobs ->
``tagpr.jobs.command``)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def imports(path: Path, package: str | None = None) -> set[str]:
    """Every module ``path`` imports, at any depth of its code (relative imports resolved against its
    package, by default the one its place in the repository gives)."""
    package = package or ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return names


def reaches(names: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if any(n == f or n.startswith(f + ".") for f in forbidden))


def modules(folder: str, exclude: str | None = None) -> list[Path]:
    return [p for p in sorted((ROOT / folder).rglob("*.py")) if not (exclude and exclude in p.parts)]


@pytest.mark.parametrize("path", modules("tagpr", exclude="jobs"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_method_layer_reaches_no_ray_role_service_or_job(path):
    assert reaches(imports(path), ("ray", "actors", "services", "tagpr.jobs")) == []


@pytest.mark.parametrize("path", modules("services"), ids=lambda p: str(p.relative_to(ROOT)))
def test_services_import_no_ray_role(path):
    assert reaches(imports(path), ("actors",)) == []


def test_the_command_helper_imports_no_entry_point_or_job():
    assert reaches(imports(ROOT / "tagpr/jobs/command.py"), ("tagpr.jobs",)) == []
    for path in modules("tagpr/jobs"):
        assert reaches(imports(path), ("tagpr.jobs.cli",)) == [], path


def test_the_walk_sees_imports_inside_functions_and_relative_ones(tmp_path):
    source = tmp_path / "probe.py"
    source.write_text("import json\n\ndef f():\n    from actors.cluster import connect\n    from .jobs import rl\n")
    assert reaches(imports(source, package="tagpr"), ("actors", "tagpr.jobs")) == [
        "actors.cluster", "actors.cluster.connect", "tagpr.jobs", "tagpr.jobs.rl"]
