"""Import, first step: streaming readers that turn a CSV, JSON, JSON Lines or XML file into numbered source rows.

Every reader holds at most one row (plus a read buffer) in memory, however large the file, and reports a bad row
as a value (``SourceRow.error``) rather than raising: only a file that cannot be read on raises.
"""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import PurePath
from typing import Any, BinaryIO
from xml.etree.ElementTree import ParseError

import ijson  # type: ignore[import-untyped]
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import iterparse

from core.errors import InvalidInput, TicketbotError

DEFAULT_MAX_ROW_BYTES = 1024 * 1024  # a ticket larger than 1 MiB is a mistake or an attack, not a request
CHUNK = 1024 * 1024  # how much of a line is read at once: bounds memory on a file with enormous lines
BOM = codecs.BOM_UTF8


class Format(StrEnum):
    """The file formats an import reads (export writes CSV and JSON)."""

    CSV = "csv"
    JSON = "json"  # a top-level array of objects; a file starting with "{" is read as JSON Lines
    JSONL = "jsonl"
    XML = "xml"


EXTENSIONS = {
    ".csv": Format.CSV,
    ".tsv": Format.CSV,
    ".txt": Format.CSV,
    ".json": Format.JSON,
    ".jsonl": Format.JSONL,
    ".ndjson": Format.JSONL,
    ".xml": Format.XML,
}


def format_from_name(name: str) -> Format | None:
    """The format a file name's extension implies, if any."""
    return EXTENSIONS.get(PurePath(name).suffix.lower())


class UnusableInput(InvalidInput):
    """Raised before any row is read when a file cannot be imported at all: empty, no header, a missing column,
    an unsupported encoding. Nothing was imported."""


class BrokenInput(TicketbotError):
    """Raised mid-file when the rest of a file cannot be read (broken XML or JSON, a DTD, a row too large to
    skip safely). Rows before ``row`` were read and may have been imported."""

    def __init__(self, message: str, *, row: int) -> None:
        super().__init__(message)
        self.row = row


@dataclass(frozen=True, slots=True)
class SourceRow:
    """One row as read: its 1-based number among the file's data rows, and its fields or why it is unreadable."""

    row: int
    fields: Mapping[str, Any] | None
    line: int | None = None
    error: str | None = None


@dataclass
class Reader:
    """An opened file: ``columns`` is the CSV header (None for formats without one); iterate for the rows."""

    rows: Iterator[SourceRow]
    columns: list[str] | None = None

    def __iter__(self) -> Iterator[SourceRow]:
        return self.rows


def open_reader(
    stream: BinaryIO,
    fmt: Format,
    *,
    encoding: str = "utf-8",
    max_row_bytes: int = DEFAULT_MAX_ROW_BYTES,
    delimiter: str | None = None,
) -> Reader:
    """Start reading ``stream`` (binary, seekable) as ``fmt``.

    Raises:
        UnusableInput: the file cannot be imported at all (checked before any row is returned).
    """
    head = stream.read(64)
    stream.seek(3 if head.startswith(BOM) else 0)
    head = head.removeprefix(BOM).lstrip()
    if not head:
        raise UnusableInput("the file is empty")
    if fmt is Format.CSV:
        encoding = _ascii_compatible(encoding)
        return _csv_reader(stream, encoding=encoding, max_row_bytes=max_row_bytes, delimiter=delimiter)
    if fmt is Format.JSON and head[:1] == b"{":
        fmt = Format.JSONL  # one object per line (or a single object): the common "JSON" export of many tools
    if fmt is Format.JSON:
        if head[:1] != b"[":
            raise UnusableInput("not a JSON array of objects (the file must start with '[' or be JSON Lines)")
        return Reader(_json_rows(stream, max_row_bytes))
    if fmt is Format.JSONL:
        return Reader(_jsonl_rows(stream, max_row_bytes))
    if head[:1] != b"<":
        raise UnusableInput("not an XML document (expected <tickets><ticket>…</ticket></tickets>)")
    return Reader(_xml_rows(stream, max_row_bytes))


def _ascii_compatible(encoding: str) -> str:
    try:
        info = codecs.lookup(encoding)
    except LookupError:
        raise UnusableInput(f"unknown encoding {encoding!r}") from None
    # Rows are split on the bytes for '"' and '\n' before decoding (so one bad row cannot stop the file):
    # that needs an encoding where ASCII characters are single bytes.
    if 'a\n"'.encode(info.name) != b'a\n"':
        raise UnusableInput(f"encoding {encoding!r} is not ASCII-compatible; convert the file to UTF-8 first")
    return info.name


# -- CSV --------------------------------------------------------------------------------------------


def _records(stream: BinaryIO, max_bytes: int) -> Iterator[tuple[int, bytes | None, int]]:
    """(first line number, bytes or None when over ``max_bytes``, size) for each CSV record.

    A record ends at a newline outside quotes; quotes are counted per line, so a quoted field may span
    lines. An over-long record is read to its end without being kept, so the next record starts in sync.
    """
    line = 0
    while True:
        first = line + 1
        parts: list[bytes] = []
        size = quotes = 0
        kept = True
        while True:
            chunk = stream.readline(CHUNK)
            if not chunk:
                break
            ended = chunk.endswith(b"\n")
            line += ended
            quotes += chunk.count(b'"')
            size += len(chunk)
            if kept:
                if size > max_bytes:
                    kept, parts = False, []
                else:
                    parts.append(chunk)
            if ended and quotes % 2 == 0:
                break
        if size == 0:
            return
        yield first, (b"".join(parts) if kept else None), size


class _Feed:
    """The csv module parses an iterator of lines; this one hands it exactly the record we split off."""

    def __init__(self) -> None:
        self.pending: str | None = None

    def __iter__(self) -> _Feed:
        return self

    def __next__(self) -> str:
        if self.pending is None:
            raise StopIteration
        text, self.pending = self.pending, None
        return text


def _guess_delimiter(header: str) -> str:
    counts = {d: header.count(d) for d in (",", ";", "\t", "|")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def _csv_reader(stream: BinaryIO, *, encoding: str, max_row_bytes: int, delimiter: str | None) -> Reader:
    records = _records(stream, max_row_bytes)
    first = next(records, None)
    if first is None:
        raise UnusableInput("the file is empty: no header row")
    _, data, size = first
    if data is None:
        raise UnusableInput(f"the header row is {size:,} bytes, over the row limit of {max_row_bytes:,}")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise UnusableInput(f"the header row is not valid {encoding}: {_decode_problem(exc)}") from None
    delim = delimiter or _guess_delimiter(text)
    try:
        header = next(csv.reader([text], delimiter=delim, strict=True))
    except (csv.Error, StopIteration) as exc:
        raise UnusableInput(f"the header row is not CSV: {exc}") from None
    names = [h.strip() for h in header]
    if not any(names):
        raise UnusableInput("the header row names no columns")
    seen: set[str] = set()
    for name in names:
        if name and name in seen:
            raise UnusableInput(f"column {name!r} appears twice in the header")
        seen.add(name)
    return Reader(_csv_rows(records, names, encoding, delim, max_row_bytes), columns=names)


def _csv_rows(
    records: Iterator[tuple[int, bytes | None, int]], names: list[str], encoding: str, delim: str, max_row_bytes: int
) -> Iterator[SourceRow]:
    feed = _Feed()
    parser = csv.reader(feed, delimiter=delim, strict=True)
    number = 0
    for line, data, size in records:
        if data is not None and not data.strip():
            continue  # blank lines are not rows
        number += 1
        if data is None:
            yield SourceRow(
                number,
                None,
                line,
                f"row is {size:,} bytes, over the limit of {max_row_bytes:,} (an enormous field or an unclosed quote)",
            )
            continue
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError as exc:
            yield SourceRow(number, None, line, f"not valid {encoding}: {_decode_problem(exc)}")
            continue
        feed.pending = text
        try:
            values = next(parser)
        except (csv.Error, StopIteration) as exc:
            feed.pending = None
            yield SourceRow(number, None, line, f"malformed CSV: {exc}")
            continue
        if len(values) != len(names):
            yield SourceRow(
                number, None, line, f"has {len(values)} fields but the header has {len(names)} (a stray delimiter?)"
            )
            continue
        yield SourceRow(number, dict(zip(names, values, strict=True)), line)


def _decode_problem(exc: UnicodeDecodeError) -> str:
    return f"byte 0x{exc.object[exc.start]:02x} at offset {exc.start} of the row ({exc.reason})"


# -- JSON and JSON Lines ----------------------------------------------------------------------------


class _RowTooLarge(Exception):
    pass


class _Meter:
    """A read-only view of a stream that refuses to read more than ``limit`` bytes for one row: parsers
    (ijson, expat) keep a value whole, so this is what bounds memory on a file with one enormous field."""

    def __init__(self, stream: BinaryIO, limit: int) -> None:
        self._stream = stream
        self._limit = limit + 2 * CHUNK
        self._since = 0

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size if 0 <= size <= CHUNK else CHUNK)
        self._since += len(data)
        if self._since > self._limit:
            raise _RowTooLarge
        return data

    def mark(self) -> None:
        """A row ended: the next one starts counting from zero."""
        self._since = 0


def _json_rows(stream: BinaryIO, max_row_bytes: int) -> Iterator[SourceRow]:
    meter = _Meter(stream, max_row_bytes)
    number = 0
    try:
        for item in ijson.items(meter, "item", use_float=True):
            number += 1
            meter.mark()
            if isinstance(item, dict):
                yield SourceRow(number, item)
            else:
                yield SourceRow(number, None, error=f"expected an object, got {_json_kind(item)}")
    except _RowTooLarge:
        raise BrokenInput(
            f"row {number + 1} is over the row limit of {max_row_bytes:,} bytes; stopped reading there "
            "(use JSON Lines or CSV to skip such a row and go on)",
            row=number + 1,
        ) from None
    except (ijson.JSONError, UnicodeDecodeError) as exc:
        raise BrokenInput(f"broken JSON after row {number}: {exc}", row=number + 1) from None


def _jsonl_rows(stream: BinaryIO, max_row_bytes: int) -> Iterator[SourceRow]:
    number = line = 0
    while True:
        chunk = stream.readline(CHUNK)
        if not chunk:
            return
        line += 1
        parts = [chunk]
        size = len(chunk)
        while not chunk.endswith(b"\n"):
            chunk = stream.readline(CHUNK)
            if not chunk:
                break
            size += len(chunk)
            if size > max_row_bytes:
                parts = []  # read on to the end of the line without keeping it
            else:
                parts.append(chunk)
        data = b"".join(parts)
        if not data.strip():
            continue
        number += 1
        if size > max_row_bytes:
            yield SourceRow(number, None, line, f"line is {size:,} bytes, over the row limit of {max_row_bytes:,}")
            continue
        try:
            item = json.loads(data)
        except UnicodeDecodeError as exc:
            yield SourceRow(number, None, line, f"not valid UTF-8: {_decode_problem(exc)}")
            continue
        except json.JSONDecodeError as exc:
            yield SourceRow(number, None, line, f"not JSON: {exc}")
            continue
        if isinstance(item, dict):
            yield SourceRow(number, item, line)
        else:
            yield SourceRow(number, None, line, f"expected an object, got {_json_kind(item)}")


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    return "a number" if isinstance(value, int | float) and not isinstance(value, bool) else "true/false"


# -- XML --------------------------------------------------------------------------------------------


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _xml_rows(stream: BinaryIO, max_row_bytes: int) -> Iterator[SourceRow]:
    meter = _Meter(stream, max_row_bytes)
    number = depth = 0
    root = None
    try:
        # forbid_dtd: a DOCTYPE is refused outright, so no entity (billion laughs, external files) is ever
        # declared, let alone expanded; tickets never need one.
        for event, elem in iterparse(meter, events=("start", "end"), forbid_dtd=True):
            if event == "start":
                depth += 1
                if root is None:
                    root = elem
                    if _local(elem.tag) != "tickets":
                        raise BrokenInput(
                            f"the root element is <{_local(elem.tag)}>; expected <tickets><ticket>…</ticket></tickets>",
                            row=0,
                        )
                continue
            depth -= 1
            if depth != 1:
                continue
            number += 1
            meter.mark()
            if _local(elem.tag) != "ticket":
                yield SourceRow(number, None, error=f"expected a <ticket> element, got <{_local(elem.tag)}>")
            else:
                fields: dict[str, Any] = {_local(k): v for k, v in elem.attrib.items()}
                for child in elem:
                    fields[_local(child.tag)] = "".join(child.itertext())
                yield SourceRow(number, fields)
            if root is not None:
                root.clear()  # drop the rows already handled: memory stays flat however many tickets follow
    except _RowTooLarge:
        raise BrokenInput(
            f"row {number + 1} is over the row limit of {max_row_bytes:,} bytes; stopped reading there",
            row=number + 1,
        ) from None
    except DefusedXmlException as exc:
        raise BrokenInput(
            f"refused XML: {exc} (a DTD or entity declaration is how XML bombs and file disclosure work; "
            "ticket files need none)",
            row=number + 1,
        ) from None
    except ParseError as exc:
        raise BrokenInput(f"broken XML after row {number}: {exc}", row=number + 1) from None
