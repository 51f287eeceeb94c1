"""Export on SQLite and PostgreSQL: the API's fields, streamed; exported then imported creates no ticket."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot.api.schemas import TicketOut
from bot.io.export import EXPORT_FIELDS, ExportFormat, write_export
from bot.io.importer import Importer, ImportOptions
from bot.io.readers import Format
from core.classify.base import Classification
from core.message import Channel
from core.ports import TicketDraft
from core.route import Route
from core.ticket import Priority, Ticket
from storage.db import make_engine, upgrade
from storage.imports import SqlImportStore
from storage.queries import TicketQuery, iter_tickets
from storage.store import SqlStore
from tests.io.conftest import ROUTER, RunImport

NATIVE = TicketDraft(
    subject="VPN down",
    body="It fails\n  since this morning.",
    requester="ana@example.com",
    requester_name="Ana",
    channel=Channel.EMAIL,
    classification=Classification("IT Support", Priority.HIGH, 0.91, "VPN down", "offline"),
    route=Route("IT Support"),
    received_at=datetime.now(UTC),
)


def no_replies(_: Ticket) -> list[object]:
    return []


def export(store: SqlStore, fmt: ExportFormat, query: TicketQuery | None = None) -> str:
    buffer = io.StringIO(newline="")
    write_export(iter_tickets(store, query or TicketQuery(), batch_size=2), buffer, fmt)
    return buffer.getvalue()


def seed(store: SqlStore, run_import: RunImport) -> None:
    store.open_ticket(None, NATIVE, no_replies)  # type: ignore[arg-type]
    rows = "".join(f"subject {i},body {i},u{i}@example.com,Finance,closed\n" for i in range(4))
    assert run_import("subject,body,requester,department,status\n" + rows).imported == 4


@pytest.mark.parametrize("fmt", list(ExportFormat))
def test_export_then_import_is_a_no_op(store: SqlStore, run_import: RunImport, fmt: ExportFormat) -> None:
    seed(store, run_import)
    data = export(store, fmt)
    report = run_import(data, Format(fmt.value))
    assert (report.rows, report.imported, report.duplicates, report.bad) == (5, 0, 5, 0), report.as_dict()
    assert export(store, fmt) == data  # nothing changed


def test_export_has_the_api_fields_in_order_newest_first(store: SqlStore, run_import: RunImport) -> None:
    seed(store, run_import)
    rows = list(csv.DictReader(io.StringIO(export(store, ExportFormat.CSV))))
    assert list(rows[0]) == EXPORT_FIELDS == list(TicketOut.model_fields)
    assert [r["subject"] for r in rows] == ["subject 3", "subject 2", "subject 1", "subject 0", "VPN down"]
    assert rows[-1]["body"] == "It fails\n  since this morning."  # line breaks survive CSV quoting
    as_json = json.loads(export(store, ExportFormat.JSON, TicketQuery(department=("IT Support",))))
    assert [t["ref"] for t in as_json] == [rows[-1]["ref"]]
    assert json.loads(export(store, ExportFormat.JSON, TicketQuery(requester="nobody"))) == []


def test_an_export_imported_into_another_database_once(store: SqlStore, run_import: RunImport, tmp_path: Path) -> None:
    seed(store, run_import)
    data = export(store, ExportFormat.JSON).encode()
    other_engine = make_engine(f"sqlite:///{tmp_path / 'other.db'}")
    upgrade(other_engine)
    other = Importer(store=SqlImportStore(other_engine), router=ROUTER)
    first = other.run(io.BytesIO(data), ImportOptions(format=Format.JSON))
    again = other.run(io.BytesIO(data), ImportOptions(format=Format.JSON))
    assert (first.imported, again.imported, again.duplicates) == (5, 0, 5)
    copied = {t.subject: t for t in iter_tickets(other_engine, TicketQuery())}
    assert copied["VPN down"].department == "IT Support" and copied["VPN down"].channel is Channel.EMAIL
    assert copied["subject 0"].resolved_at is not None
    other_engine.dispose()


def test_times_read_back_as_written_so_pages_never_repeat_a_ticket(store: SqlStore, run_import: RunImport) -> None:
    # Whole seconds and many equal created_at: a time stored in another text form than the ORM's would compare
    # wrongly on SQLite and make keyset pages repeat or skip tickets.
    rows = "".join(f"s{i},b{i},u{i}@example.com,2024-01-0{1 + i % 3}T10:00:00Z\n" for i in range(30))
    assert run_import("subject,body,requester,created_at\n" + rows).imported == 30
    ids = [t.id for t in iter_tickets(store, TicketQuery(), batch_size=4)]
    assert len(ids) == len(set(ids)) == 30
    third = TicketQuery(created_from=datetime(2024, 1, 3, tzinfo=UTC))
    assert {t.created_at.isoformat() for t in iter_tickets(store, third)} == {"2024-01-03T10:00:00+00:00"}
