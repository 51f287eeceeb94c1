"""Fixtures for import/export: the import engine over the `store` fixture (SQLite and PostgreSQL)."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest

from bot.io.importer import Importer, ImportOptions, ImportReport
from bot.io.readers import Format
from core.classify.offline import OfflineClassifier
from core.route import Router
from storage.imports import SqlImportStore
from storage.store import SqlStore
from tests.api.conftest import api, make_api, offline_classifier  # noqa: F401 - the API over real HTTP

DEPARTMENTS = ["IT Support", "HR", "Facilities", "Finance", "General"]
ROUTER = Router(departments=DEPARTMENTS, triage_department="General", confidence_threshold=0.35)

RunImport = Callable[..., ImportReport]


@pytest.fixture(scope="session")
def offline() -> OfflineClassifier:
    return OfflineClassifier.load(None, DEPARTMENTS)


@pytest.fixture
def importer(store: SqlStore, offline: OfflineClassifier) -> Importer:
    return Importer(store=SqlImportStore(store.engine), router=ROUTER, classifier=offline)


@pytest.fixture
def run_import(importer: Importer) -> RunImport:
    """Import bytes in a given format: run_import(data, "csv", classify=True, ...)."""

    def run(data: bytes | str, fmt: str = "csv", **options: object) -> ImportReport:
        raw = data.encode("utf-8") if isinstance(data, str) else data
        return importer.run(io.BytesIO(raw), ImportOptions(format=Format(fmt), source=f"test.{fmt}", **options))  # type: ignore[arg-type]

    return run
