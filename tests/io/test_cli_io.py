"""`ticketbot import` and `ticketbot export` through click's CliRunner, on a SQLite database of their own."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from bot.cli import main

ROOT = Path(__file__).resolve().parents[2]
GOOD = (
    "external_id,subject,body,requester,department,status\n"
    "A-1,VPN down,It fails since this morning,ana@example.com,IT Support,open\n"
    "A-2,Payslip,Where is my payslip?,bo@example.com,HR,closed\n"
)


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    env = {
        "TICKETBOT_CONFIG": str(ROOT / "config.yaml"),
        "TICKETBOT_DATA_DIR": str(tmp_path / "var"),
        "TICKETBOT_CLASSIFIER__MODE": "offline",
    }
    monkeypatch.delenv("TICKETBOT_DATABASE__URL", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return CliRunner()


def run(cli: CliRunner, *args: str | Path) -> Result:
    return cli.invoke(main, [str(a) for a in args], catch_exceptions=False)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_import_reports_and_a_second_import_skips_everything(cli: CliRunner, tmp_path: Path) -> None:
    source = write(tmp_path / "tickets.csv", GOOD)
    first = run(cli, "import", source)
    assert first.exit_code == 0, first.output
    assert re.search(r"imported\s+2\n", first.output), first.output
    report = json.loads(run(cli, "import", source, "--json").output)
    assert (report["imported"], report["duplicates"], report["exit_code"]) == (0, 2, 0)
    listed = json.loads(run(cli, "tickets", "list", "--json").output)
    assert sorted(t["subject"] for t in listed) == ["Payslip", "VPN down"]
    shown = json.loads(run(cli, "tickets", "show", str(listed[0]["id"]), "--json").output)
    assert [e["kind"] for e in shown["events"]] == ["imported"]
    outbox = json.loads(run(cli, "outbox", "list", "--json").output)
    assert outbox == []  # nobody is mailed about historical tickets


def test_bad_rows_exit_1_with_row_numbers_and_an_errors_file(cli: CliRunner, tmp_path: Path) -> None:
    source = write(tmp_path / "t.csv", "subject,requester,priority\nok,a@b.c,low\nno one,,low\nx,c@d.e,someday\n")
    errors_file = tmp_path / "errors.csv"
    result = run(cli, "import", source, "--errors", errors_file)
    assert result.exit_code == 1, result.output
    assert "row 2 (line 3): missing requester" in result.output
    assert "row 3 (line 4): unknown priority 'someday'" in result.output
    with errors_file.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [(r["row"], r["line"]) for r in rows] == [("2", "3"), ("3", "4")]


def test_unusable_input_exits_2_and_changes_nothing(cli: CliRunner, tmp_path: Path) -> None:
    result = run(cli, "import", write(tmp_path / "t.csv", "subject,body\nx,y\n"))
    assert result.exit_code == 2 and "no requester column" in result.output
    result = run(cli, "import", write(tmp_path / "t.txt.gz", "x"))
    assert result.exit_code == 2 and "give --format" in result.output
    bomb = write(tmp_path / "bomb.xml", '<!DOCTYPE t [<!ENTITY a "aaaa">]><tickets/>')
    result = run(cli, "import", bomb)
    assert result.exit_code == 2 and "refused XML" in result.output
    assert json.loads(run(cli, "tickets", "list", "--json").output) == []


def test_mapping_options_classify_and_dry_run(cli: CliRunner, tmp_path: Path) -> None:
    source = write(tmp_path / "legacy.csv", "Title,Text,From\nPrinter,The printer on floor 2 is jammed,x@example.com\n")
    mapping = write(tmp_path / "map.yaml", "body: Text\nrequester: From\n")
    dry = json.loads(
        run(
            cli, "import", source, "--map", "subject=Title", "--map-file", mapping, "--classify", "--dry-run", "--json"
        ).output
    )
    assert (dry["imported"], dry["classified"], dry["dry_run"]) == (1, 1, True)
    assert json.loads(run(cli, "tickets", "list", "--json").output) == []
    result = run(cli, "import", source, "--map", "subject=Title", "--map-file", mapping, "--classify")
    assert result.exit_code == 0, result.output
    [ticket] = json.loads(run(cli, "tickets", "list", "--json").output)
    assert ticket["subject"] == "Printer" and ticket["department"] == "IT Support"
    bad_map = run(cli, "import", source, "--map", "title=Title")
    assert bad_map.exit_code == 2 and "unknown field 'title'" in bad_map.output


@pytest.mark.parametrize("fmt", ["csv", "json"])  # jsonl: tests/io/test_export.py
def test_export_then_import_creates_no_ticket(cli: CliRunner, tmp_path: Path, fmt: str) -> None:
    run(cli, "submit", "--from", "ana@example.com", "--subject", "Heating", "The heating is broken, it is freezing")
    run(cli, "import", write(tmp_path / "t.csv", GOOD))
    exported = tmp_path / f"all.{fmt}"
    result = run(cli, "export", "-o", exported)
    assert result.exit_code == 0 and "exported 3 tickets" in result.output
    again = json.loads(run(cli, "import", exported, "--json").output)
    assert (again["rows"], again["imported"], again["duplicates"], again["bad"]) == (3, 0, 3, 0), again
    assert len(json.loads(run(cli, "tickets", "list", "--json").output)) == 3


def test_export_filters_like_the_api(cli: CliRunner, tmp_path: Path) -> None:
    run(cli, "import", write(tmp_path / "t.csv", GOOD))
    result = run(cli, "export", "--format", "json", "--department", "hr", "--status", "closed")
    [only] = json.loads(result.output)
    assert only["subject"] == "Payslip" and only["ref"] == f"#{only['id']}"
    assert set(only) >= {"id", "subject", "body", "requester", "department", "priority", "status", "created_at"}
    assert json.loads(run(cli, "export", "--q", "vpn", "--open").output)[0]["subject"] == "VPN down"
    assert json.loads(run(cli, "export", "--created-from", "2999-01-01").output) == []
    bad = run(cli, "export", "--status", "sleeping")
    assert bad.exit_code == 2 and "unknown value 'sleeping'" in bad.output
