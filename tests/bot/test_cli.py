"""The `ticketbot` command line against a real SQLite database and the shipped offline classifier."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from bot.cli import main


@pytest.fixture
def cli(bot_env: dict[str, str]) -> CliRunner:
    return CliRunner(env=bot_env)


def run(cli: CliRunner, *args: str) -> Result:
    return cli.invoke(main, list(args), catch_exceptions=False)


def submit(cli: CliRunner, text: str, *extra: str) -> dict[str, object]:
    result = run(cli, "submit", "--from", "ana@example.com", "--json", *extra, text)
    assert result.exit_code == 0, result.output
    data: dict[str, object] = json.loads(result.output)
    return data


def test_submit_prints_the_routing_line(cli: CliRunner) -> None:
    result = run(cli, "submit", "--from", "ana@example.com", "--subject", "VPN", "My laptop won't connect to the VPN")
    assert result.exit_code == 0, result.output
    first = result.output.splitlines()[0]
    assert first.startswith("#1 → IT Support (") and first.endswith("%)")


def test_submit_json_has_the_documented_fields(cli: CliRunner) -> None:
    data = submit(cli, "The heating on the third floor is broken and it is freezing")
    for key in ("id", "department", "priority", "confidence", "status", "classifier", "summary"):
        assert key in data
    assert data["department"] == "Facilities" and data["status"] == "new" and data["classifier"] == "offline"
    assert 0 <= float(data["confidence"]) <= 1  # type: ignore[arg-type]


def test_tickets_list_show_set_status_and_reroute(cli: CliRunner) -> None:
    first = submit(cli, "I need to get my train tickets reimbursed, where do I send the receipts?")
    submit(cli, "How many days of annual leave do I have left this year?")
    listed = json.loads(run(cli, "tickets", "list", "--json").output)
    assert [t["id"] for t in listed] == [2, 1]
    only_hr = json.loads(run(cli, "tickets", "list", "--department", "hr", "--json").output)
    assert [t["id"] for t in only_hr] == [2]

    assert run(cli, "tickets", "reroute", str(first["id"]), "General", "--note", "policy question").exit_code == 0
    assert run(cli, "tickets", "set-status", str(first["id"]), "in progress").exit_code == 0
    assert run(cli, "tickets", "set-priority", str(first["id"]), "urgent", "--note", "CFO asks").exit_code == 0
    shown = json.loads(run(cli, "tickets", "show", str(first["id"]), "--json").output)
    assert shown["department"] == "General" and shown["status"] == "in_progress" and shown["priority"] == "urgent"
    kinds = [e["kind"] for e in shown["events"]]
    assert kinds == ["created", "classified", "routed", "rerouted", "status", "priority"]
    assert shown["events"][3]["data"]["note"] == "policy question"

    table = run(cli, "tickets", "list").output
    assert "#1" in table and "#2" in table
    assert "Events" in run(cli, "tickets", "show", "1").output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["tickets", "show", "99"], "no ticket #99"),
        (["tickets", "set-status", "99", "resolved"], "no ticket #99"),
        (["tickets", "set-status", "1", "finished"], "unknown status 'finished'"),
        (["tickets", "reroute", "1", "Legal"], "unknown department 'Legal'"),
        (["tickets", "set-priority", "1", "asap"], "unknown priority 'asap'"),
        (["tickets", "set-priority", "99", "low"], "no ticket #99"),
        (["tickets", "list", "--department", "Legal"], "unknown department 'Legal'"),
        (["submit", "--from", "ana@example.com", "  "], "empty request"),
        (["inbound", "retry", "42"], "no inbound message 42"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_changes_nothing(cli: CliRunner, args: list[str], message: str) -> None:
    submit(cli, "printer on floor 2 is jammed")
    before = run(cli, "tickets", "show", "1", "--json").output
    result = run(cli, *args)
    assert result.exit_code == 2
    assert message in result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1
    assert run(cli, "tickets", "show", "1", "--json").output == before


def test_config_check_names_every_bad_key(cli: CliRunner, tmp_path: Path) -> None:
    assert run(cli, "config", "check").exit_code == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("classifier:\n  mode: maybe\nhttp:\n  port: -1\n  colour: blue\n")
    # Without the test's own overrides, which would (rightly) mask the file's values.
    plain = CliRunner(env={"TICKETBOT_CLASSIFIER__MODE": None, "TICKETBOT_HTTP__PORT": None})
    result = plain.invoke(main, ["config", "check", "--config", str(bad)])
    assert result.exit_code == 2
    for key in ("classifier.mode", "http.port", "http.colour"):
        assert key in result.output


def test_config_check_parses_the_digest_schedules_as_run_does(cli: CliRunner, tmp_path: Path) -> None:
    bad = tmp_path / "cron.yaml"
    bad.write_text("digests:\n  department_cron: '0 9 * * mon-fry'\n  admin_cron: '61 9 * * *'\n")
    result = cli.invoke(main, ["config", "check", "--config", str(bad)])
    assert result.exit_code == 2
    assert "digests.department_cron" in result.output and "mon-fry" in result.output
    assert "digests.admin_cron" in result.output


def test_db_upgrade_is_idempotent(cli: CliRunner) -> None:
    assert run(cli, "db", "upgrade").exit_code == 0
    assert "latest schema" in run(cli, "db", "upgrade").output


def test_every_command_has_help(cli: CliRunner) -> None:
    commands = [
        [],
        ["run"],
        ["submit"],
        ["tickets"],
        ["tickets", "list"],
        ["tickets", "show"],
        ["tickets", "set-status"],
        ["tickets", "reroute"],
        ["train"],
        ["eval"],
        ["inbound", "list"],
        ["inbound", "retry"],
        ["outbox", "list"],
        ["config", "check"],
        ["db", "upgrade"],
        ["mail", "send-test"],
        ["stats"],
        ["outbox", "retry"],
    ]
    for command in commands:
        result = run(cli, *command, "--help")
        assert result.exit_code == 0, command
        assert "Usage:" in result.output


def test_inbound_and_outbox_lists(cli: CliRunner) -> None:
    submit(cli, "my monitor flickers")
    rows = json.loads(run(cli, "inbound", "list", "--json").output)
    assert rows[0]["status"] == "processed" and rows[0]["ticket_id"] == 1
    assert json.loads(run(cli, "outbox", "list", "--json").output) == []


def write_history(path: Path) -> Path:
    rows = [
        ("laptop screen is cracked", "IT"),
        ("cannot log in to my account", "IT"),
        ("vpn keeps disconnecting", "IT"),
        ("annual leave request for august", "People"),
        ("question about my payslip deductions", "People"),
        ("need to update my pension contribution", "People"),
        ("radiator in room 4 leaks", "Building"),
        ("the lift is out of order", "Building"),
        ("invoice from supplier not paid", "Money"),
        ("expense claim for hotel", "Money"),
    ]
    text = "ticket,team\n" + "\n".join(f'"{t}",{lab}' for t, lab in rows) + "\n"
    path.write_text(text)
    return path


def test_train_and_eval_on_a_csv_with_a_mapping(cli: CliRunner, tmp_path: Path, bot_env: dict[str, str]) -> None:
    csv_path = write_history(tmp_path / "history.csv")
    mapping = tmp_path / "map.json"
    mapping.write_text(
        json.dumps({"IT": "IT Support", "People": "HR", "Building": {"department": "Facilities"}, "Money": "Finance"})
    )
    result = run(
        cli, "train", "--csv", str(csv_path), "--text-col", "ticket", "--label-col", "team", "--map", str(mapping)
    )
    assert result.exit_code == 0, result.output
    model = Path(bot_env["TICKETBOT_DATA_DIR"]) / "model" / "offline.joblib"
    assert model.exists() and "saved model" in result.output

    report = run(
        cli,
        "eval",
        "--csv",
        str(csv_path),
        "--text-col",
        "ticket",
        "--label-col",
        "team",
        "--map",
        str(mapping),
        "--json",
    )
    assert report.exit_code == 0, report.output
    data = json.loads(report.output)
    assert data["rows"] == 10 and data["accuracy"] >= 0.8 and data["classifier"] == "offline"
    table = run(
        cli, "eval", "--csv", str(csv_path), "--text-col", "ticket", "--label-col", "team", "--map", str(mapping)
    )
    assert "precision" in table.output and "confusion" in table.output
    # `submit` now uses the trained model.
    assert "trained" in str(submit(cli, "my vpn keeps disconnecting")["classifier_model"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train"], "give --csv FILE"),
        (["train", "--csv", "missing.csv", "--text-col", "a", "--label-col", "b"], "missing.csv"),
        (["train", "--csv", "{csv}", "--text-col", "nope", "--label-col", "team"], "nope"),
        (["eval", "--csv", "{csv}", "--text-col", "ticket", "--label-col", "missing"], "missing"),
        (["train", "--from-history"], "no confirmed tickets"),
    ],
)
def test_train_and_eval_bad_input(cli: CliRunner, tmp_path: Path, args: list[str], message: str) -> None:
    csv_path = write_history(tmp_path / "history.csv")
    result = run(cli, *[a.replace("{csv}", str(csv_path)) for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_train_from_history_learns_from_corrections(cli: CliRunner) -> None:
    for text in ["the coffee machine is broken again", "coffee machine on floor 2 leaks", "coffee machine empty"]:
        ticket = submit(cli, text)
        assert (
            run(cli, "tickets", "reroute", str(ticket["id"]), "Finance", "--note", "we pay the vendor").exit_code == 0
        )
    result = run(cli, "train", "--from-history")
    assert result.exit_code == 0, result.output
    assert "history: 3 confirmed tickets" in result.output


def test_stats_reports_per_classifier_figures(cli: CliRunner) -> None:
    submit(cli, "my monitor flickers")
    data = json.loads(run(cli, "stats", "--json").output)
    assert data["tickets"] == 1 and data["classifiers"][0]["classifier"] == "offline"
    assert data["inbound"] == {"processed": 1}
    assert "fallback rate" in run(cli, "stats").output
