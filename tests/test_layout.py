"""The code's layout keeps its promises: one registry of reasons, imports flowing one way, docstrings."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from rack.reasons import Reason, table

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_readme_lists_every_reason_from_the_enum():
    readme = (ROOT / "README.md").read_text()
    listed = re.search(r"<!-- reasons:start -->\n(.*?)<!-- reasons:end -->", readme, re.S)
    assert listed is not None, "the README has no reasons table"
    assert listed.group(1) == table()
    assert len({r.value for r in Reason}) == len(Reason)
    assert {r.kind for r in Reason} == {"user", "platform", "outcome"}


def test_reason_codes_are_not_spelled_as_literals_outside_the_registry():
    codes = {r.value for r in Reason if ":" in r.value}
    offenders = []
    for path in (ROOT / "rack").rglob("*.py"):
        if path.name == "reasons.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if node.value in codes or any(node.value.startswith(f"{c}: ") for c in codes):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert offenders == []


def test_builds_and_logs_never_import_the_pipeline_and_the_domain_no_web_or_queue():
    wrong = []
    for path in (ROOT / "rack").rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        imported = _imports(path)
        if rel.startswith(("rack/builds/", "rack/logs/")):
            wrong += [f"{rel} imports {n}" for n in imported if n.startswith("rack.pipeline")]
        wrong += [
            f"{rel} imports {n}" for n in imported if n.split(".")[0] in ("flask", "celery", "werkzeug")
        ]
        wrong += [
            f"{rel} imports {n}" for n in imported if n.split(".")[0] in ("rack_api", "rack_worker", "cli")
        ]
    assert wrong == []


def test_every_package_says_what_it_holds():
    for init in [*(ROOT / "rack").rglob("__init__.py")]:
        doc = ast.get_docstring(ast.parse(init.read_text()))
        if init.parent.name in ("rack", "sql"):
            continue  # the top package and the SQL folder are named by the README's layout table
        assert doc and len(doc) > 40, f"{init.relative_to(ROOT)} has no docstring saying what it holds"
