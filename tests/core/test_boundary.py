"""The ports-and-adapters boundary: core imports no transport or database library, adapters no composition root."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FORBIDDEN = {
    "core": {
        "slack_bolt",
        "slack_sdk",
        "imapclient",
        "aiosmtpd",
        "sqlalchemy",
        "alembic",
        "psycopg",
        "bot",
        "intake",
        "storage",
    },
    "storage": {"bot", "intake", "slack_bolt", "slack_sdk", "imapclient", "aiosmtpd"},
    "intake": {"bot", "slack_bolt", "slack_sdk", "sqlalchemy", "alembic"},
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_stay_inside_the_boundary(package: str) -> None:
    offenders = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = imported_modules(path) & FORBIDDEN[package]
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert offenders == {}, f"{package} imports across the boundary: {offenders}"


def test_the_checker_sees_imports(tmp_path: Path) -> None:
    sample = tmp_path / "m.py"
    sample.write_text("import sqlalchemy.orm\nfrom slack_sdk import WebClient\nfrom . import sibling\n")
    assert imported_modules(sample) == {"sqlalchemy", "slack_sdk"}
