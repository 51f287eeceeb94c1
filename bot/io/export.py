"""Export: streams tickets, exactly as GET /api/v1/tickets returns them, to CSV, JSON or JSON Lines."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from enum import StrEnum
from typing import Any, TextIO

from bot.api.schemas import TicketOut
from core.ticket import Ticket

# The columns, in the API's order: what `ticketbot import` reads back (id, ref, confidence, classifier and
# triaged are informative there; see docs/import-export.md).
EXPORT_FIELDS: list[str] = list(TicketOut.model_fields)


class ExportFormat(StrEnum):
    CSV = "csv"
    JSON = "json"  # one top-level array, written element by element
    JSONL = "jsonl"


def ticket_record(ticket: Ticket) -> dict[str, Any]:
    """One ticket as the API serialises it (ISO 8601 times, enum values)."""
    return TicketOut.of(ticket).model_dump(mode="json")


def write_export(tickets: Iterable[Ticket], out: TextIO, fmt: ExportFormat) -> int:
    """Write every ticket of ``tickets`` (an iterator: nothing is held) to ``out``; returns how many."""
    count = 0
    if fmt is ExportFormat.CSV:
        writer = csv.DictWriter(out, fieldnames=EXPORT_FIELDS, lineterminator="\r\n")  # RFC 4180 line ends
        writer.writeheader()
        for ticket in tickets:
            writer.writerow(ticket_record(ticket))
            count += 1
        return count
    if fmt is ExportFormat.JSONL:
        for ticket in tickets:
            out.write(json.dumps(ticket_record(ticket), ensure_ascii=False) + "\n")
            count += 1
        return count
    out.write("[")
    for ticket in tickets:
        out.write(",\n" if count else "\n")
        out.write(json.dumps(ticket_record(ticket), ensure_ascii=False))
        count += 1
    out.write("\n]\n" if count else "]\n")
    return count
