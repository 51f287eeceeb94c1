"""Storage adapter: free-text candidates from SQLite's trigram index (migration 0008) for the ticket list's ``q``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from sqlalchemy import Connection, text
from sqlalchemy.exc import OperationalError

if TYPE_CHECKING:
    from alembic.runtime.environment import NameFilterParentNames, NameFilterType

TABLE = "ticket_search"
# A word in more tickets than this is cheaper to find by scanning newest first (the scan stops after a page):
# reading this many candidates, and their tickets to sort them, costs about what scanning 1M / CAP * page
# tickets does. Measured on 1,000,000 tickets: docs/api.md, "Free-text search".
CAP = 2000
# Trigrams asked for at most: every one narrows the candidates, but a long paste of text needs no more than
# this to leave only the tickets holding it, and each one costs a posting-list merge.
MAX_TRIGRAMS = 24
PROBE_TRIGRAMS = 3


PENDING = f"{TABLE}_pending"
# Rows an import indexes per transaction when it catches up: big enough that FTS5 writes few segments (about
# 20 us a ticket, against 170 us when each 5,000-row batch indexed itself), small enough to hold SQLite's
# write lock for a fraction of a second.
CATCH_UP_CHUNK = 20_000
EXISTS = f"SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '{PENDING}'"
# An import's batch, recorded as not indexed yet: (lo, hi] holds its ticket ids (it held the write lock).
RECORD_PENDING = f"INSERT INTO {PENDING} (lo, hi) VALUES (?, ?)"


def is_search_table(name: str | None) -> bool:
    """The FTS5 table and its shadow tables, which are not in the SQLAlchemy metadata (schema comparisons skip them)."""
    return name is not None and (name == TABLE or name.startswith(TABLE + "_"))


def include_name(name: str | None, type_: NameFilterType, _parents: NameFilterParentNames) -> bool:
    """Alembic's ``include_name`` hook: leave the search tables out of autogenerate and schema comparisons."""
    return not (type_ == "table" and is_search_table(name))


def trigrams(needle: str) -> list[str]:
    """The distinct trigrams of ``needle`` in order, at most ``MAX_TRIGRAMS`` spread over it (a long paste's
    start is its most common part); empty when ``needle`` is shorter than three characters."""
    found = list(dict.fromkeys(needle[i : i + 3] for i in range(len(needle) - 2)))
    if len(found) > MAX_TRIGRAMS:
        step = len(found) / MAX_TRIGRAMS
        found = [found[int(k * step)] for k in range(MAX_TRIGRAMS)]
    return found


def match_expression(trigrams: Sequence[str]) -> str:
    """An FTS5 query for the rows holding every one of ``trigrams``, a superset of those holding the text.

    The index keeps no positions (detail=none), so the trigrams are ANDed rather than asked for as a phrase;
    each is quoted, so any character, quotes and FTS5 operators included, is matched as itself.
    """
    return " AND ".join('"' + t.replace('"', '""') + '"' for t in trigrams)


def probe(found: Sequence[str]) -> list[str]:
    """A few of ``found``: ANDing every trigram merges each one's list of tickets, and the common ones have a
    million entries. Three from inside words (first, middle, last) usually narrow a rare text as well as all of
    them; trigrams holding a space (" re", "e t") are the commonest kind and are left out when others exist."""
    inner = [t for t in found if not any(ch.isspace() for ch in t)] or list(found)
    if len(inner) <= PROBE_TRIGRAMS:
        return inner
    return list(dict.fromkeys([inner[0], inner[len(inner) // 2], inner[-1]]))


def candidates(conn: Connection, needle: str, cap: int = CAP) -> list[int] | None:
    """Ids of the tickets that may contain ``needle`` (case-insensitive), at most ``cap``; None when the index
    cannot narrow the search: no trigram in ``needle``, more than ``cap`` candidates, imported tickets not
    indexed yet, or no index (an SQLite without FTS5). Callers still apply the LIKE: candidates are a superset.

    A probe with three of the trigrams comes first; only if it leaves more than ``cap`` are all of them asked for.
    """
    found = trigrams(needle)
    if not found:
        return None
    stmt = text(f"SELECT rowid FROM {TABLE} WHERE {TABLE} MATCH :expression LIMIT :limit")
    tries = [probe(found)]
    if set(tries[0]) != set(found):
        tries.append(found)
    try:
        if conn.execute(text(f"SELECT 1 FROM {PENDING} LIMIT 1")).first() is not None:
            return None  # an import is being indexed: the index does not know every ticket yet
        for subset in tries:
            ids = list(conn.execute(stmt, {"expression": match_expression(subset), "limit": cap + 1}).scalars())
            if len(ids) <= cap:
                return ids
    except OperationalError:
        # No such table (FTS5 missing when the migration ran): the scan answers, as before the index existed.
        return None
    return None


def catch_up(conn: Connection, chunk: int = CATCH_UP_CHUNK) -> int | None:
    """Index up to ``chunk`` imported tickets of the oldest pending range, in the caller's (write) transaction;
    how many ids it covered, or None when nothing is pending (or there is no index)."""
    try:
        row = conn.execute(text(f"SELECT lo, hi FROM {PENDING} ORDER BY lo LIMIT 1")).first()
    except OperationalError:
        return None
    if row is None:
        return None
    lo, hi = int(row[0]), int(row[1])
    upto = min(hi, lo + chunk)
    conn.execute(
        text(
            f"INSERT INTO {TABLE} (rowid, subject, body) SELECT id, subject, body FROM tickets "
            "WHERE id > :lo AND id <= :upto AND external_key IS NOT NULL"
        ),
        {"lo": lo, "upto": upto},
    )
    if upto >= hi:
        conn.execute(text(f"DELETE FROM {PENDING} WHERE lo = :lo"), {"lo": lo})
    else:
        conn.execute(text(f"UPDATE {PENDING} SET lo = :upto WHERE lo = :lo"), {"lo": lo, "upto": upto})
    return upto - lo
