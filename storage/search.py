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


# What an import runs after inserting a batch (ids above the batch's starting maximum): one statement, so FTS5
# flushes once per batch (the insert trigger skips imported tickets, see migration 0008).
INDEX_NEWER_THAN = f"INSERT INTO {TABLE} (rowid, subject, body) SELECT id, subject, body FROM tickets WHERE id > ?"
EXISTS = f"SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '{TABLE}'"


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
    cannot narrow the search: no trigram in ``needle``, more than ``cap`` candidates, or no index (an SQLite
    without FTS5, or a database not yet migrated). Callers still apply the LIKE: candidates are a superset.

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
        for subset in tries:
            ids = list(conn.execute(stmt, {"expression": match_expression(subset), "limit": cap + 1}).scalars())
            if len(ids) <= cap:
                return ids
    except OperationalError:
        # No such table (FTS5 missing when the migration ran): the scan answers, as before the index existed.
        return None
    return None
