"""dvc.yaml's code deps are exactly the code each stage runs: a stage script's import closure inside
the package (imports inside functions included), no more and no less. A dep that misses code is a
stale result waiting to happen; a dep on code the stage never runs re-runs it for nothing."""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import yaml

from conftest import REPO

PACKAGE = "chestxray"


def module_file(src: Path, module: str) -> Path | None:
    """The file of ``module`` under ``src`` (a module or a package's __init__.py), or None."""
    base = src.joinpath(*module.split("."))
    return next((f for f in (base.with_suffix(".py"), base / "__init__.py") if f.is_file()), None)


def imported_modules(src: Path, file: Path) -> set[str]:
    """Every package module ``file`` imports, anywhere in it, with the packages on the way
    (importing a.b.c runs a/__init__.py and a/b/__init__.py first)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)  # `from a.b import c`: c is a module of a.b, or a name in it
            names |= {
                f"{node.module}.{alias.name}" for alias in node.names if module_file(src, f"{node.module}.{alias.name}")
            }
        assert not (isinstance(node, ast.ImportFrom) and node.level), f"{file}: use absolute imports"
    modules = set()
    for name in names:
        parts = name.split(".")
        if parts[0] == PACKAGE:
            modules |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return {m for m in modules if module_file(src, m)}


def has_code(file: Path) -> bool:
    """Whether ``file`` holds more than a docstring (an empty package marker runs nothing)."""
    body = ast.parse(file.read_text(encoding="utf-8")).body
    return any(not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)) for node in body)


def closure(root: Path, script: Path) -> set[str]:
    """The files (relative to ``root``) that running ``script`` executes: itself and its import
    closure inside the package, less package markers that hold no code."""
    src, seen, todo = root / "src", set(), [script]
    while todo:
        for module in imported_modules(src, todo.pop()):
            file = module_file(src, module)
            if file not in seen:
                seen.add(file)
                todo.append(file)
    return {script.relative_to(root).as_posix()} | {f.relative_to(root).as_posix() for f in seen if has_code(f)}


def mismatches(root: Path) -> list[str]:
    """One line per stage whose code deps in ``root/dvc.yaml`` differ from what its script runs."""
    problems = []
    for name, stage in yaml.safe_load((root / "dvc.yaml").read_text())["stages"].items():
        script = re.fullmatch(r"python (stages/\w+\.py)", stage["cmd"]).group(1)
        deps = {d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", [])}
        code = {d for d in deps if d.endswith(".py")}
        needed = closure(root, root / script)
        if missing := sorted(needed - code):
            problems.append(f"{name}: runs {', '.join(missing)} but does not depend on it")
        if extra := sorted(code - needed):
            problems.append(f"{name}: depends on {', '.join(extra)} but never runs it")
    return problems


def test_every_stage_depends_on_exactly_the_code_it_runs():
    assert mismatches(REPO) == []


def test_a_planted_import_without_its_dep_fails(tmp_path):
    for part in ("src", "stages", "dvc.yaml"):
        copy = shutil.copytree if (REPO / part).is_dir() else shutil.copy
        copy(REPO / part, tmp_path / part)
    sources = tmp_path / "src/chestxray/data/sources.py"
    sources.write_text(sources.read_text() + "\n\ndef _late():\n    from chestxray.judge import leaderboard  # noqa\n")
    problems = mismatches(tmp_path)
    # check imports sources too, and audit for the external datasets
    assert [p.split(":")[0] for p in problems] == ["check", "download", "audit"]
    assert "src/chestxray/judge/leaderboard.py" in problems[1] and "src/chestxray/judge/metrics.py" in problems[1]


def test_a_dep_on_code_the_stage_never_runs_fails(tmp_path):
    for part in ("src", "stages"):
        shutil.copytree(REPO / part, tmp_path / part)
    dag = yaml.safe_load((REPO / "dvc.yaml").read_text())
    dag["stages"]["download"]["deps"].append("src/chestxray/data/layouts/csv_table.py")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(dag))
    assert mismatches(tmp_path) == ["download: depends on src/chestxray/data/layouts/csv_table.py but never runs it"]


def test_package_markers_hold_no_code_unless_listed():
    """A package __init__.py with code runs on every import below it, so the closure counts it;
    the subpackages of this package keep theirs to a docstring."""
    markers = (REPO / "src" / PACKAGE).rglob("__init__.py")
    with_code = sorted(f.relative_to(REPO).as_posix() for f in markers if has_code(f))
    assert with_code == ["src/chestxray/data/layouts/__init__.py"]


def test_params_are_checked_before_any_stage_runs():
    """The check stage tracks the whole of params.yaml and every other stage depends on its mark, so
    DVC runs it (and stops on a bad value) before it deletes any other stage's outputs."""
    dag = yaml.safe_load((REPO / "dvc.yaml").read_text())
    stages = dag["stages"]
    assert stages["check"]["params"] == [{"params.yaml": None}]
    assert stages["check"]["outs"] == [{"${PARAMS_OK}": {"cache": False, "persist": True}}]
    assert [name for name, stage in stages.items() if "${PARAMS_OK}" not in stage.get("deps", [])] == ["check"]
