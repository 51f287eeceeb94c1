"""Import engine on SQLite and PostgreSQL: every format, mapping, dedupe, classification and bad rows."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from bot.io.importer import HANDOVER_INTERVAL, Importer, ImportOptions, quick_handover
from bot.io.readers import Format
from core.errors import StorageError
from core.message import Channel
from core.ports import TicketFilter
from core.ticket import EventKind, Priority, Status
from storage.imports import COLUMNS, ImportedTicket, SqlImportStore
from storage.queries import TicketQuery, ticket_page
from storage.store import SqlStore
from tests.io.conftest import ROUTER, RunImport

CSV = (
    "external_id,subject,body,requester,department,priority,status,created_at\n"
    'ZD-1,VPN down,"It fails since this morning,\nafter the update",ana@example.com,IT Support,high,open,'
    "2024-03-01T09:00:00Z\n"
    "ZD-2,Payslip,Where is my payslip?,bo@example.com,hr,,solved,2024-03-02 10:00\n"
)


def test_csv_rows_become_tickets_with_an_imported_event_and_nothing_sent(
    store: SqlStore, run_import: RunImport
) -> None:
    report = run_import(CSV)
    assert (report.rows, report.imported, report.duplicates, report.bad, report.exit_code) == (2, 2, 0, 0, 0)
    second, first = store.list_tickets(TicketFilter(limit=10))
    assert first.subject == "VPN down" and first.body == "It fails since this morning,\nafter the update"
    assert (first.department, first.priority, first.status) == ("IT Support", Priority.HIGH, Status.NEW)
    assert first.created_at.isoformat() == "2024-03-01T09:00:00+00:00"
    assert (second.department, second.status) == ("HR", Status.RESOLVED)  # canonical name, "solved" understood
    assert second.resolved_at is not None
    [event] = store.ticket_events(first.id)
    assert event.kind is EventKind.IMPORTED
    assert event.data["external_id"] == "ZD-1" and event.data["row"] == 1 and event.data["line"] == 2
    assert store.list_outbox() == []  # historical data: no acknowledgement, no Slack post


def test_reimporting_the_same_file_creates_nothing(store: SqlStore, run_import: RunImport) -> None:
    run_import(CSV)
    again = run_import(CSV)
    assert (again.imported, again.duplicates, again.exit_code) == (0, 2, 0)
    assert len(store.list_tickets(TicketFilter(limit=10))) == 2


def test_rows_without_external_id_are_deduplicated_by_content(store: SqlStore, run_import: RunImport) -> None:
    data = "subject,body,requester\nPrinter,Jammed again,ana@example.com\nPrinter, Jammed  again ,ANA@example.com\n"
    report = run_import(data)
    assert (report.imported, report.duplicates) == (1, 1)  # whitespace and case do not make a new request
    assert run_import(data).imported == 0


def test_json_array_jsonl_and_xml(store: SqlStore, run_import: RunImport) -> None:
    rows = [
        {"subject": "Desk broken", "requester": "a@example.com", "department": "Facilities"},
        {"subject": "Invoice", "body": "Unpaid", "requester": {"email": "b@example.com"}, "department": "Finance"},
    ]
    report = run_import(json.dumps(rows), "json", mapping={"requester": "requester.email"})
    # The first row has no requester.email path but a plain requester... mapped away: reported, not guessed.
    assert report.imported == 1 and report.bad == 1 and report.errors[0].row == 1
    lines = "\n".join(json.dumps(r) for r in [{"subject": "Heating", "requester": "c@example.com", "id": 7}]) + "\n\n"
    assert run_import(lines, "jsonl").imported == 1
    xml = (
        "<?xml version='1.0'?><tickets><ticket external_id='X1'><subject>Badge</subject>"
        "<requester>d@example.com</requester><body>lost &amp; found</body></ticket></tickets>"
    )
    report = run_import(xml, "xml")
    assert report.imported == 1, report.as_dict()
    [badge] = [t for t in store.list_tickets(TicketFilter(limit=10)) if t.subject == "Badge"]
    assert badge.body == "lost & found" and badge.department == "General" and badge.triaged


def test_mapping_renames_columns(store: SqlStore, run_import: RunImport) -> None:
    data = "Title,Description,Email,Team\nWi-Fi,No signal on floor 3,e@example.com,IT Support\n"
    report = run_import(
        data, mapping={"subject": "Title", "body": "Description", "requester": "Email", "department": "Team"}
    )
    assert report.imported == 1 and report.ignored_fields == []
    [ticket] = store.list_tickets(TicketFilter(limit=10))
    assert (ticket.subject, ticket.body, ticket.department) == ("Wi-Fi", "No signal on floor 3", "IT Support")


def test_classify_routes_rows_without_a_department(store: SqlStore, run_import: RunImport) -> None:
    data = (
        "subject,body,requester,department\n"
        "Password reset,I forgot my password and cannot log in to my laptop,f@example.com,\n"
        "Parking,The car park barrier is broken,g@example.com,Facilities\n"
        "Other,x,h@example.com,Marketing\n"
    )
    report = run_import(data, classify=True)
    assert (report.imported, report.classified, report.bad) == (2, 1, 1)
    assert "unknown department 'Marketing'" in report.errors[0].reason and report.exit_code == 1
    by_subject = {t.subject: t for t in store.list_tickets(TicketFilter(limit=10))}
    assert by_subject["Password reset"].department == "IT Support"
    assert by_subject["Password reset"].classifier == "offline"
    assert by_subject["Parking"].classifier == "import"


def test_resolved_imports_teach_the_model_only_labels_people_gave(store: SqlStore, run_import: RunImport) -> None:
    data = (
        "subject,body,requester,department,status\n"
        "Password reset,I forgot my password and cannot log in,f@example.com,,resolved\n"
        "Parking,The car park barrier is broken,g@example.com,Facilities,resolved\n"
    )
    assert run_import(data, classify=True).imported == 2
    # The classifier's guess for the first row is not a label; the file's department for the second is.
    assert store.labelled_history() == [("Parking", "The car park barrier is broken", "Facilities")]

    # Reopened and resolved here, it was worked by a person in its department: now it counts.
    guessed = next(t for t in store.list_tickets(TicketFilter(limit=10)) if t.subject == "Password reset")
    store.change_status(guessed.id, Status.IN_PROGRESS, actor="U0AGENT", note=None, compose=lambda t: [])
    store.change_status(guessed.id, Status.RESOLVED, actor="U0AGENT", note=None, compose=lambda t: [])
    assert [subject for subject, _body, _dept in store.labelled_history()] == ["Parking", "Password reset"]


def test_bad_rows_are_reported_and_good_rows_imported(store: SqlStore, run_import: RunImport) -> None:
    data = (
        b"subject,body,requester,priority,created_at\n"
        b"ok,fine,a@example.com,low,\n"
        b"no requester,text,,low,\n"
        b",,b@example.com,,\n"
        b"bad priority,x,c@example.com,soonish,\n"
        b"bad time,x,d@example.com,,yesterday\n"
        b"latin1 \xe9t\xe9,x,e@example.com,,\n"
        b"too,many,fields,x,y,z\n"
        b"also ok,fine,f@example.com,urgent,2024-01-01\n"
    )
    report = run_import(data)
    assert (report.rows, report.imported, report.bad, report.exit_code) == (8, 2, 6, 1)
    reasons = {e.row: e.reason for e in report.errors}
    assert reasons[2] == "missing requester"
    assert "missing subject and body" in reasons[3]
    assert "unknown priority 'soonish'" in reasons[4]
    assert "created_at: not an ISO 8601 time" in reasons[5]
    assert "not valid utf-8: byte 0xe9" in reasons[6]
    assert "has 6 fields but the header has 5" in reasons[7]
    assert [e.line for e in report.errors] == [3, 4, 5, 6, 7, 8]
    assert len(store.list_tickets(TicketFilter(limit=10))) == 2


def test_dry_run_changes_nothing(store: SqlStore, run_import: RunImport) -> None:
    report = run_import(CSV, dry_run=True)
    assert (report.imported, report.dry_run) == (2, True)
    assert store.list_tickets(TicketFilter(limit=10)) == []
    run_import(CSV)
    assert run_import(CSV, dry_run=True).duplicates == 2


def test_batches_commit_and_duplicates_within_a_file_are_skipped(store: SqlStore, run_import: RunImport) -> None:
    rows = "".join(f"T{i % 25},body {i % 25},u{i % 25}@example.com\n" for i in range(60))
    report = run_import("subject,body,requester\n" + rows, batch_size=10)
    assert (report.imported, report.duplicates) == (25, 35)
    assert len(store.list_tickets(TicketFilter(limit=100))) == 25


def test_a_batch_mixing_stored_and_new_rows_gives_each_new_ticket_one_event(
    store: SqlStore, run_import: RunImport
) -> None:
    """The insert skips rows already stored; their tickets keep their one event, and each new ticket gets its own
    event with its own row's data (on SQLite both come from the batch's one JSON array)."""
    run_import("external_id,subject,requester\nK2,Two,a@b.c\nK4,Four,a@b.c\n")
    report = run_import("external_id,subject,requester\n" + "".join(f"K{i},T{i},a@b.c\n" for i in range(1, 6)))
    assert (report.imported, report.duplicates) == (3, 2)
    with store.engine.connect() as conn:
        found = conn.execute(
            text(
                "SELECT t.subject, e.kind, e.data FROM tickets t JOIN ticket_events e ON e.ticket_id = t.id "
                "ORDER BY t.id, e.id"
            )
        ).all()
    rows = {subject: (kind, json.loads(data) if isinstance(data, str) else data) for subject, kind, data in found}
    assert len(found) == len(rows) == 5  # one event each, none repeated for the rows already stored
    assert {s: (k, d["row"], d["external_id"]) for s, (k, d) in rows.items()} == {
        "Two": ("imported", 1, "K2"),
        "Four": ("imported", 2, "K4"),
        "T1": ("imported", 1, "K1"),
        "T3": ("imported", 3, "K3"),
        "T5": ("imported", 5, "K5"),
    }


class RefusingStore(SqlImportStore):
    """The real store, except that the database "refuses" rows whose subject says so (a constraint we lack)."""

    def insert(self, tickets: Sequence[ImportedTicket], *, actor: str) -> dict[str, int]:
        if any(t.subject.startswith("refuse") for t in tickets):
            raise StorageError("database error: value violates a check constraint")
        return super().insert(tickets, actor=actor)


def test_a_batch_the_database_refuses_is_retried_row_by_row(store: SqlStore) -> None:
    importer = Importer(store=RefusingStore(store.engine), router=ROUTER)
    data = "subject,requester\nfine 1,a@b.c\nrefuse me,a@b.c\nfine 2,a@b.c\n"
    report = importer.run(io.BytesIO(data.encode()), ImportOptions(format=Format.CSV, batch_size=10))
    assert (report.imported, report.bad, report.exit_code) == (2, 1, 1)
    assert report.errors[0].row == 2 and "the database refused the row" in report.errors[0].reason
    assert sorted(t.subject for t in store.list_tickets(TicketFilter(limit=10))) == ["fine 1", "fine 2"]
    with pytest.raises(StorageError):  # every row refused: the database is the problem, the import stops
        importer.run(io.BytesIO(b"subject,requester\nrefuse,a@b.c\n"), ImportOptions(format=Format.CSV))


def test_imported_tickets_are_found_by_free_text_search(store: SqlStore, run_import: RunImport) -> None:
    run_import(CSV)
    run_import(CSV)  # a re-import adds no index entries either
    assert [t.subject for t in ticket_page(store, TicketQuery(q="since this MORNING")).items] == ["VPN down"]
    assert [t.subject for t in ticket_page(store, TicketQuery(q="where is my")).items] == ["Payslip"]
    if store.engine.dialect.name == "sqlite":
        # The batch was indexed once, by the import itself (the insert trigger leaves imported rows to it).
        with store.engine.connect() as conn:
            hits = conn.execute(text("SELECT count(*) FROM ticket_search WHERE ticket_search MATCH 'pay'")).scalar()
        assert hits == 1


def test_sqlite_batch_insert_stores_what_row_by_row_inserts_would(store: SqlStore) -> None:
    """SQLite inserts a batch from one JSON array (storage.imports.INSERT_JSON); an SQLite without JSON functions
    goes row by row. Both must store the same values with the same SQLite types."""
    if store.engine.dialect.name != "sqlite":
        pytest.skip("the JSON batch insert is SQLite's")
    when = datetime(2024, 2, 29, 23, 59, 59, 123456, tzinfo=UTC)

    def ticket(key: str, **changes: object) -> ImportedTicket:
        values: dict[str, object] = dict(
            key=key,
            subject='Quotes " and \\ backslashes, émoji 🖨️, tab\tand\nnewline',
            body='[1, 2] {"not": "json"} \' -- ;',
            requester="ana@example.com",
            channel=Channel.EMAIL,
            department="IT Support",
            priority=Priority.HIGH,
            status=Status.RESOLVED,
            confidence=0.5,
            summary="",
            classifier="import",
            created_at=when,
            updated_at=when,
            resolved_at=when,
            triaged=True,
            event={"row": 1, "nested": {"list": [1, None]}},
        )
        values.update(changes)
        return ImportedTicket(**values)  # type: ignore[arg-type]

    batch = SqlImportStore(store.engine)
    rows = SqlImportStore(store.engine)
    rows._json = False  # as on an SQLite without JSON functions
    variants = [{}, {"assignee": None, "resolved_at": None, "triaged": False, "confidence": 1.0, "status": Status.NEW}]
    for n, changes in enumerate(variants):
        assert batch.insert([ticket(f"json-{n}", **changes)], actor="t")
        assert rows.insert([ticket(f"rows-{n}", **changes)], actor="t")
        # Encoded ahead, as the importer does on its reading thread: the same values.
        assert batch.insert([batch.encode(ticket(f"ahead-{n}", **changes))], actor="t")
    assert batch._json is True
    columns = [c for c in COLUMNS if c != "external_key"]
    typed = ", ".join(f"{c}, typeof({c})" for c in columns)
    with store.engine.connect() as conn:
        stored = {
            key: tuple(rest)
            for key, *rest in conn.execute(text(f"SELECT external_key, {typed} FROM tickets ORDER BY id"))
        }
        joined = "SELECT t.external_key, e.data FROM ticket_events e JOIN tickets t ON t.id = e.ticket_id"
        events = {key: data for key, data in conn.execute(text(joined))}
    for n in range(len(variants)):
        assert stored[f"json-{n}"] == stored[f"rows-{n}"] == stored[f"ahead-{n}"]
        assert events[f"json-{n}"] == events[f"rows-{n}"] == events[f"ahead-{n}"]


def test_quick_handover_lowers_the_switch_interval_only_while_it_lasts() -> None:
    before = sys.getswitchinterval()
    with pytest.raises(RuntimeError), quick_handover():
        assert sys.getswitchinterval() == pytest.approx(HANDOVER_INTERVAL)
        raise RuntimeError("an import that fails still gives the interval back")
    assert sys.getswitchinterval() == before
