"""Malformed input: bad encoding, missing columns, broken XML and JSON, an XML bomb, a 200 MB file.

None of them crashes the import: a file that cannot be read at all changes nothing (exit code 2), a file
broken midway keeps the rows before the break, and every bad row is named with its number and reason.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from bot.io.importer import Importer, ImportOptions
from bot.io.readers import Format, UnusableInput
from core.ports import TicketFilter
from storage.store import SqlStore
from tests.io.conftest import RunImport

BOMB = """<?xml version="1.0"?>
<!DOCTYPE tickets [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol9 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<tickets><ticket><subject>&lol9;</subject><requester>x@example.com</requester></ticket></tickets>
"""
XXE = """<?xml version="1.0"?>
<!DOCTYPE tickets [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<tickets><ticket><subject>&secret;</subject><requester>x@example.com</requester></ticket></tickets>
"""


def tickets(store: SqlStore) -> list[str]:
    return sorted(t.subject for t in store.list_tickets(TicketFilter(limit=1000)))


@pytest.mark.parametrize("document", [BOMB, XXE], ids=["billion-laughs", "external-entity"])
def test_xml_with_a_dtd_is_refused_before_anything_is_expanded(
    store: SqlStore, run_import: RunImport, document: str
) -> None:
    report = run_import(document, "xml")
    assert report.exit_code == 2 and report.imported == 0
    assert report.fatal is not None and "refused XML" in report.fatal and "DTD" in report.fatal
    assert tickets(store) == []


def test_broken_xml_keeps_the_rows_before_the_break(store: SqlStore, run_import: RunImport) -> None:
    good = "".join(f"<ticket><subject>S{i}</subject><requester>r{i}@example.com</requester></ticket>" for i in range(3))
    report = run_import(f"<tickets>{good}<ticket><subject>half</subject><requester>", "xml")
    assert (report.rows, report.imported, report.exit_code) == (3, 3, 1)
    assert report.fatal is not None and report.fatal.startswith("broken XML after row 3")
    rest = "<ticket><subject>half</subject><requester>h@x.org</requester></ticket>"
    fixed = run_import(f"<tickets>{good}{rest}</tickets>", "xml")
    assert (fixed.imported, fixed.duplicates, fixed.exit_code) == (1, 3, 0)  # the fixed file adds only the rest
    assert tickets(store) == ["S0", "S1", "S2", "half"]


def test_xml_with_the_wrong_root_or_no_xml_at_all(run_import: RunImport) -> None:
    report = run_import("<issues><issue/></issues>", "xml")
    assert report.exit_code == 2 and "root element is <issues>" in (report.fatal or "")
    with pytest.raises(UnusableInput, match="not an XML document"):
        run_import("subject,requester\n", "xml")


def test_broken_json_keeps_the_rows_before_the_break(store: SqlStore, run_import: RunImport) -> None:
    rows = [{"subject": f"S{i}", "requester": "a@example.com"} for i in range(2)]
    report = run_import(json.dumps(rows)[:-1] + ', {"subject": "x", "requester": ', "json")
    assert (report.imported, report.exit_code) == (2, 1)
    assert report.fatal is not None and "broken JSON after row 2" in report.fatal
    report = run_import('[{"subject": "a", "requester": "b@c.d"}, 42, "x"]', "json")
    assert report.imported == 1 and [e.reason for e in report.errors] == [
        "expected an object, got a number",
        "expected an object, got a string",
    ]


def test_json_lines_go_on_after_a_bad_line(store: SqlStore, run_import: RunImport) -> None:
    data = (
        b'{"subject": "a", "requester": "x@y.z"}\n{"subject": "b", \n\xff\xfe\n[1]\n'
        b'{"subject": "c", "requester": "x@y.z"}'
    )
    report = run_import(data, "jsonl")
    assert (report.rows, report.imported, report.bad) == (5, 2, 3)
    assert [e.line for e in report.errors] == [2, 3, 4]
    assert report.errors[0].reason.startswith("not JSON") and "not valid UTF-8" in report.errors[1].reason


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "the file is empty"),
        (b"subject,body\nx,y\n", "no requester column"),
        (b"requester,priority\nx,low\n", "no subject or body column"),
        (b"subject,subject,requester\n", "appears twice"),
        (b"sub\xffject,requester\n", "header row is not valid utf-8"),
    ],
)
def test_unusable_csv_changes_nothing(store: SqlStore, run_import: RunImport, data: bytes, message: str) -> None:
    with pytest.raises(UnusableInput, match=message):
        run_import(data)
    assert tickets(store) == []


def test_a_mapped_column_that_is_missing_is_named(run_import: RunImport) -> None:
    with pytest.raises(UnusableInput, match="column 'Title' \\(mapped to subject\\) is not in the header"):
        run_import("subject,requester\nx,y\n", mapping={"subject": "Title"})


def test_an_enormous_field_in_a_200_mb_file_is_one_bad_row(store: SqlStore, importer: Importer, tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    block = b"x" * (1024 * 1024)
    with path.open("wb") as f:
        f.write(b'subject,body,requester\nfirst,ok,a@example.com\nhuge,"')
        for _ in range(200):  # a quoted field of 200 MiB, with line breaks now and then
            f.write(block + b"\n")
        f.write(b'",b@example.com\nlast,"ok, quoted",c@example.com\n')
    assert path.stat().st_size > 200 * 1024 * 1024
    with path.open("rb") as f:
        report = importer.run(f, ImportOptions(format=Format.CSV, source="big.csv"))
    assert (report.rows, report.imported, report.bad, report.exit_code) == (3, 2, 1, 1)
    [error] = report.errors
    assert (error.row, error.line) == (2, 3)
    assert error.reason.startswith("row is 209,715,") and "over the limit of 1,048,576" in error.reason
    assert tickets(store) == ["first", "last"]


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_an_enormous_value_in_json_or_xml_stops_the_read_with_a_clear_error(
    store: SqlStore, importer: Importer, fmt: str
) -> None:
    huge = "y" * (8 * 1024 * 1024)
    if fmt == "json":
        data = json.dumps([{"subject": "ok", "requester": "a@b.c"}, {"subject": huge, "requester": "a@b.c"}])
    else:
        data = (
            f"<tickets><ticket><subject>ok</subject><requester>a@b.c</requester></ticket>"
            f"<ticket><subject>{huge}</subject></ticket></tickets>"
        )
    report = importer.run(io.BytesIO(data.encode()), ImportOptions(format=Format(fmt), max_row_bytes=64 * 1024))
    assert (report.imported, report.exit_code) == (1, 1)
    assert report.fatal is not None and report.fatal.startswith("row 2 is over the row limit of 65,536 bytes")
    assert tickets(store) == ["ok"]


def test_malformed_csv_quoting_is_a_bad_row_and_the_next_rows_are_read(run_import: RunImport) -> None:
    data = 'subject,requester\n"a"b,x@y.z\nok,x@y.z\n"unclosed,x@y.z\n'
    report = run_import(data)
    assert report.imported == 1 and report.bad == 2
    assert report.errors[0].reason.startswith("malformed CSV") and report.errors[0].line == 2
    assert report.errors[1].line == 4
