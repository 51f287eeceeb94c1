"""Free-text search (``q``) on both engines: the SQLite trigram index gives exactly the scan's answers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, text, update

from storage import search
from storage.queries import TicketQuery, ticket_page
from storage.store import SqlStore
from storage.tables import TicketRow
from tests.api.test_queries import add

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
tickets = TicketRow.metadata.tables["tickets"]

TEXTS = [
    ("VPN down", "The VPN client says authentication failed."),
    ("Heating", "It is 15°C in room 4.12, the radiator is cold"),
    ("Invoice INV-2041", "Paid 50% of INV-2041 twice? Please check."),
    ("Ünïcödé", "Straße in München: the badge reader at the side entrance"),
    ("quotes", 'He wrote "AND" OR NOT -- a * b ^ c: NEAR(x y)'),
    ("Payroll", "my payslip shows the wrong bonus"),
    ("printer", "The printer on floor 2 is jammed; the PRINTER on floor 3 too"),
]

# Each needle with the subjects of the tickets holding it, newest first (TEXTS are created oldest first).
NEEDLES = {
    "vpn": ["VPN down"],
    "AUTHENTICATION FAILED": ["VPN down"],
    "inv-2041": ["Invoice INV-2041"],
    "50%": ["Invoice INV-2041"],  # a LIKE wildcard, matched literally
    "50_": [],
    "15°c": ["Heating"],
    "room 4.12,": ["Heating"],
    "münchen": ["Ünïcödé"],
    "badge reader": ["Ünïcödé"],
    '"AND" OR': ["quotes"],  # FTS5 syntax in the text is matched as text
    "NEAR(x": ["quotes"],
    "a * b ^ c": ["quotes"],
    "printer on floor": ["printer"],
    "floor": ["printer"],
    "zeppelin": [],
    "yr": ["Payroll"],  # under three characters: no trigram, the scan answers
    "e": [s for s, _ in reversed(TEXTS) if "e" in (s + _).lower()],
    "the wrong bonus, please": [],  # every trigram is there but not the text: the LIKE decides
    "shows the wrong bonus" * 3: [],  # long needles keep a sample of their trigrams
}


@pytest.fixture
def searchable(store: SqlStore) -> SqlStore:
    add(store, [{"subject": s, "body": b, "created_at": T0 + timedelta(minutes=i)} for i, (s, b) in enumerate(TEXTS)])
    return store


def subjects(store: SqlStore, needle: str, **filters: object) -> list[str]:
    page = ticket_page(store, TicketQuery(q=needle, **filters), limit=100)  # type: ignore[arg-type]
    return [t.subject for t in page.items]


@pytest.mark.parametrize("needle", list(NEEDLES))
def test_search_finds_exactly_the_tickets_holding_the_text(searchable: SqlStore, needle: str) -> None:
    assert subjects(searchable, needle) == NEEDLES[needle]


def test_sqlite_has_the_index_and_uses_it(sqlite_store: SqlStore) -> None:
    add(sqlite_store, [{"subject": s, "body": b, "created_at": T0} for s, b in TEXTS])
    with sqlite_store.engine.connect() as conn:
        assert search.candidates(conn, "zeppelin") == []
        found = search.candidates(conn, "badge reader")
        assert found is not None and len(found) == 1
        assert search.candidates(conn, "yr") is None  # no trigram: the caller scans
        assert search.candidates(conn, "the", cap=2) is None  # too common: the caller scans


def test_a_probe_too_wide_asks_for_every_trigram(sqlite_store: SqlStore) -> None:
    # "abc", "def" and "ghi" (the probe for "abcdefghi") are in six tickets; the whole text in one.
    rows = [{"subject": "abc def ghi", "body": str(i), "created_at": T0} for i in range(5)]
    [*_, whole] = add(sqlite_store, [*rows, {"subject": "abcdefghi", "body": "", "created_at": T0}])
    assert search.probe(search.trigrams("abcdefghi")) == ["abc", "def", "ghi"]
    with sqlite_store.engine.connect() as conn:
        assert len(search.candidates(conn, "abcdefghi", cap=10) or []) == 6  # the probe was narrow enough
        assert search.candidates(conn, "abcdefghi", cap=3) == [whole]  # it was not: all 7 trigrams
    assert subjects(sqlite_store, "abcdefghi") == ["abcdefghi"]


def test_index_follows_inserts_updates_and_deletes(sqlite_store: SqlStore) -> None:
    first, second = add(
        sqlite_store,
        [
            {"subject": "old words", "body": "nothing to see", "created_at": T0},
            {"subject": "printer", "body": "toner", "created_at": T0},
        ],
    )
    assert subjects(sqlite_store, "old words") == ["old words"]
    with sqlite_store.engine.begin() as conn:
        conn.execute(update(tickets).where(tickets.c.id == first).values(subject="new words", body="zeppelin"))
    assert subjects(sqlite_store, "old words") == []
    assert subjects(sqlite_store, "new words") == ["new words"]
    assert subjects(sqlite_store, "zeppelin") == ["new words"]
    with sqlite_store.engine.begin() as conn:
        conn.execute(tickets.delete().where(tickets.c.id == second))
        # The index forgot it too: not even a candidate.
        assert conn.execute(text("SELECT count(*) FROM ticket_search WHERE ticket_search MATCH 'ton'")).scalar() == 0
    assert subjects(sqlite_store, "toner") == []


def test_search_combines_with_filters_and_pages(store: SqlStore) -> None:
    rows = [
        {
            "subject": f"VPN #{i}",
            "body": "badge reader broken" if i % 3 == 0 else "all fine",
            "department": "Facilities" if i % 2 else "IT Support",
            "created_at": T0 + timedelta(minutes=i),
        }
        for i in range(30)
    ]
    add(store, rows)
    expected = [f"VPN #{i}" for i in reversed(range(30)) if i % 3 == 0 and i % 2]
    assert subjects(store, "BADGE reader", department=("Facilities",)) == expected
    # Page by page, with the candidates narrowing each page the same way.
    seen: list[str] = []
    cursor = None
    while True:
        page = ticket_page(store, TicketQuery(q="badge reader"), limit=3, cursor=cursor)
        seen += [t.subject for t in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [f"VPN #{i}" for i in reversed(range(30)) if i % 3 == 0]


def test_a_database_without_the_index_still_searches(sqlite_engine: Engine) -> None:
    store = SqlStore(sqlite_engine)
    add(store, [{"subject": s, "body": b, "created_at": T0} for s, b in TEXTS])
    with sqlite_engine.begin() as conn:  # as on an SQLite built without FTS5, where migration 0008 skips it
        for name in ("ticket_search_insert", "ticket_search_update", "ticket_search_delete"):
            conn.execute(text(f"DROP TRIGGER {name}"))
        conn.execute(text("DROP TABLE ticket_search"))
    assert subjects(store, "badge reader") == ["Ünïcödé"]
    assert subjects(store, "zeppelin") == []
