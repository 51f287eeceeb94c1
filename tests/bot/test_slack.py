"""Slack intake in HTTP mode, end to end: signed requests to the real HTTP server, the real store, Pipeline, worker
loops and outbox dispatcher, and the fake Slack Web API for everything the bot sends."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import pytest

from core.classify.base import Classification
from core.inbound import InboundStatus
from core.ticket import Priority, Status
from storage.db import make_engine, upgrade
from storage.store import SqlStore
from tests.fakes import slack_api as fake
from tests.fakes.classifier import ScriptedClassifier
from tests.fakes.slack_api import IT_AGENT, FakeSlackAPI, MakeRig, command_body, signed_headers

slack_env = fake.slack_env
slack_api = fake.slack_api
make_rig = fake.make_rig


@dataclass
class TimedClassifier(ScriptedClassifier):
    """A ScriptedClassifier that notes when each classification finished (time.monotonic())."""

    finished: list[float] = field(default_factory=list)

    def classify(self, subject: str, body: str) -> Classification:
        result = super().classify(subject, body)
        self.finished.append(time.monotonic())
        return result


def test_ticket_is_acknowledged_before_a_slow_classifier_finishes(
    sqlite_store: SqlStore, make_rig: MakeRig, slack_api: FakeSlackAPI
) -> None:
    classifier = TimedClassifier(delay=5)
    rig = make_rig(sqlite_store, classifier=classifier)

    sent = time.monotonic()
    response = rig.command("VPN keeps dropping\nsince this morning", trigger_id="slow-1")
    acked = time.monotonic()

    assert response.status_code == 200
    assert "filing your request" in response.text
    assert acked - sent < 3.0  # Slack's deadline; in practice a few milliseconds
    [answer] = slack_api.wait_for("respond", timeout=20)
    assert classifier.finished, "the classifier ran in the worker loop"
    assert acked < classifier.finished[0] < answer.at  # ordering, not tight timings
    assert answer.params["text"] == "Ticket #1 opened → IT Support (medium)"
    assert answer.params["response_type"] == "ephemeral"


def test_ticket_is_stored_routed_answered_and_posted(
    sqlite_store: SqlStore, make_rig: MakeRig, slack_api: FakeSlackAPI
) -> None:
    rig = make_rig(sqlite_store, classifier=ScriptedClassifier(department="Finance", priority=Priority.HIGH))

    response = rig.command("Expense claim rejected twice\nReceipt attached in the portal", trigger_id="trig-42")

    assert response.status_code == 200
    [answer] = slack_api.wait_for("respond", _path="/respond/trig-42")
    assert answer.params["text"] == "Ticket #1 opened → Finance (high)"
    [card] = slack_api.wait_for("chat.postMessage", channel="C0FIN")
    assert card.params["text"].startswith("Ticket #1 · Finance · high")
    assert card.params["metadata"] == {"event_type": "ticketbot_ticket", "event_payload": {"ticket_id": 1}}
    [ticket] = rig.tickets()
    assert (ticket.requester, ticket.requester_name, ticket.subject) == ("U0ANA", "ana", "Expense claim rejected twice")
    assert ticket.body == "Expense claim rejected twice\nReceipt attached in the portal"
    [inbound] = sqlite_store.list_inbound(status=None, limit=5)
    assert inbound.dedupe_key == "slack:trigger:trig-42"
    assert inbound.status is InboundStatus.PROCESSED and inbound.ticket_id == 1
    stored = json.loads(inbound.payload)
    assert stored["channel_id"] == "C0ASK" and stored["response_url"].endswith("/respond/trig-42")
    rig.wait_outbox_idle()
    [item] = [i for i in sqlite_store.list_outbox() if i.kind == "slack_post"]
    assert item.sent_ref == f"C0FIN:{card_ts(slack_api, 'C0FIN')}"


def card_ts(api: FakeSlackAPI, channel: str) -> str:
    [post] = api.posts(channel)
    return str(post["ts"])


def test_a_retried_command_makes_one_ticket(
    store: SqlStore, make_rig: MakeRig, slack_api: FakeSlackAPI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bot.slack")
    rig = make_rig(store)

    first = rig.command("Printer on floor 3 is jammed", trigger_id="dup-1")
    slack_api.wait_for("respond")
    retry = rig.command(
        "Printer on floor 3 is jammed",
        trigger_id="dup-1",
        extra_headers={"x-slack-retry-num": "1", "x-slack-retry-reason": "http_timeout"},
    )

    assert first.status_code == retry.status_code == 200
    rig.wait_until(lambda: "retry ignored" in caplog.text, what="the retry to be recognised")
    rig.wait_outbox_idle()
    assert len(rig.tickets()) == 1
    assert len(store.list_inbound(status=None, limit=10)) == 1
    assert len(slack_api.calls("respond")) == 1
    assert len(slack_api.posts("C0IT")) == 1


def test_bad_or_stale_signatures_get_401_and_store_nothing(
    sqlite_store: SqlStore, make_rig: MakeRig, slack_api: FakeSlackAPI
) -> None:
    rig = make_rig(sqlite_store, loops=False)
    body = urlencode(command_body(slack_api, "Monitor flickers", trigger_id="sig-1"))

    wrong_secret = rig.post(body, signed_headers(body, secret="not-the-secret"))
    stale = rig.post(body, signed_headers(body, timestamp=int(time.time()) - 6 * 60))
    unsigned = rig.post(body, {"content-type": "application/x-www-form-urlencoded"})
    tampered = rig.post(body.replace("Monitor", "Payroll"), signed_headers(body))

    assert [r.status_code for r in (wrong_secret, stale, unsigned, tampered)] == [401, 401, 401, 401]
    assert sqlite_store.list_inbound(status=None, limit=5) == []
    valid = rig.post(body, signed_headers(body))
    assert valid.status_code == 200
    rig.wait_until(lambda: sqlite_store.list_inbound(status=None, limit=5), what="the valid request to be stored")


def test_empty_command_opens_a_form_that_validates_and_files_once(
    sqlite_store: SqlStore, make_rig: MakeRig, slack_api: FakeSlackAPI
) -> None:
    rig = make_rig(sqlite_store, classifier=ScriptedClassifier(department="Facilities"))

    response = rig.command("", trigger_id="form-1")

    assert response.status_code == 200 and response.text == ""
    [opened] = slack_api.wait_for("views.open")
    assert opened.params["trigger_id"] == "form-1"
    view = opened.params["view"]
    assert view["callback_id"] == "ticket_modal"
    assert json.loads(view["private_metadata"])["response_url"].endswith("/respond/form-1")

    invalid = rig.interact(view_submission(slack_api, view, title=" ", description="", urgency="high"))
    assert invalid.status_code == 200
    assert invalid.json()["response_action"] == "errors"
    assert set(invalid.json()["errors"]) == {"title", "description"}

    submission = view_submission(slack_api, view, title="Heating off in room 4", description="It is 12 °C.")
    assert rig.interact(submission).status_code == 200
    assert rig.interact(submission).status_code == 200  # Slack resent it: same view id, one ticket
    [answer] = slack_api.wait_for("respond", _path="/respond/form-1")
    # The urgency the requester chose in the form sets the priority.
    assert answer.params["text"] == "Ticket #1 opened → Facilities (urgent)"
    rig.wait_outbox_idle()
    [ticket] = rig.tickets()
    assert ticket.subject == "Heating off in room 4"
    assert ticket.body == "It is 12 °C.\n\nUrgency (as given by the requester): urgent"
    assert [i.dedupe_key for i in sqlite_store.list_inbound(status=None, limit=5)] == ["slack:view:V0000FORM"]


def view_submission(
    api: FakeSlackAPI, view: dict[str, object], *, title: str, description: str, urgency: str = "urgent"
) -> dict[str, object]:
    values = {
        "title": {"value": {"type": "plain_text_input", "value": title}},
        "description": {"value": {"type": "plain_text_input", "value": description}},
        "urgency": {"value": {"type": "static_select", "selected_option": {"value": urgency}}},
    }
    return {
        "type": "view_submission",
        "team": {"id": fake.TEAM_ID, "domain": "test"},
        "user": {"id": "U0ANA", "username": "ana", "name": "ana", "team_id": fake.TEAM_ID},
        "api_app_id": "A0APP",
        "token": "legacy-verification-token",
        "trigger_id": "view-trigger",
        "view": {**view, "id": "V0000FORM", "type": "modal", "state": {"values": values}, "hash": "h1"},
    }


def test_status_and_mine_show_requesters_only_their_own_tickets(
    sqlite_store: SqlStore, make_rig: MakeRig, slack_api: FakeSlackAPI
) -> None:
    rig = make_rig(sqlite_store)
    rig.command("Laptop battery swollen", trigger_id="t-ana", user="U0ANA")
    rig.command("Cannot log in to payroll", trigger_id="t-bob", user="U0BOB", user_name="bob")
    rig.wait_until(lambda: len(rig.tickets()) == 2, what="two tickets")
    ana, bob = rig.tickets()

    def answer(text: str, user: str, trigger: str) -> str:
        response = rig.command(text, trigger_id=trigger, user=user)
        assert response.status_code == 200
        [reply] = slack_api.wait_for("respond", _path=f"/respond/{trigger}")
        return json.dumps(reply.params)

    assert f"Ticket #{ana.id}" in answer(f"status {ana.id}", "U0ANA", "q1")
    assert "can't find ticket" in answer(f"status {bob.id}", "U0ANA", "q2")
    assert f"Ticket #{bob.id}" in answer(f"status #{bob.id}", IT_AGENT, "q3")  # agents see any ticket
    mine = answer("mine", "U0ANA", "q4")
    assert f"#{ana.id}" in mine and f"#{bob.id}" not in mine
    sqlite_store.change_status(ana.id, Status.RESOLVED, actor="cli", note=None, compose=lambda t: [])
    assert "no open tickets" in answer("mine", "U0ANA", "q5")
    help_text = rig.command("help", trigger_id="q6").text
    assert "/ticket status 123" in help_text and "/ticket mine" in help_text
    assert len(rig.tickets()) == 2  # none of these made a ticket


def test_message_shortcut_files_the_message_with_its_permalink(
    sqlite_store: SqlStore, make_rig: MakeRig, slack_api: FakeSlackAPI
) -> None:
    rig = make_rig(sqlite_store)
    payload = {
        "type": "message_action",
        "callback_id": "create_ticket_from_message",
        "trigger_id": "short-1",
        "response_url": slack_api.response_url("short-1"),
        "team": {"id": fake.TEAM_ID, "domain": "test"},
        "channel": {"id": "C0ASK", "name": "ask-anything"},
        "user": {"id": "U0ANA", "name": "ana"},
        "message_ts": "1699999999.000200",
        "message": {
            "type": "message",
            "user": "U0BOB",
            "ts": "1699999999.000200",
            "text": "Badge reader at door B is dead",
        },
        "token": "legacy-verification-token",
    }

    assert rig.interact(payload).status_code == 200
    assert rig.interact(payload).status_code == 200  # the same trigger_id again: still one ticket

    [answer] = slack_api.wait_for("respond", _path="/respond/short-1")
    assert answer.params["text"].startswith("Ticket #1 opened")
    link = slack_api.calls("chat.getPermalink")[0]
    assert (link.params["channel"], link.params["message_ts"]) == ("C0ASK", "1699999999.000200")
    rig.wait_outbox_idle()
    [ticket] = rig.tickets()
    assert ticket.requester == "U0ANA" and ticket.subject == "Badge reader at door B is dead"
    assert "https://example.slack.com/archives/C0ASK/p1699999999000200" in ticket.body
    assert "by @U0BOB" in ticket.body


def test_a_request_is_stored_before_it_is_acknowledged(
    sqlite_store: SqlStore, make_rig: MakeRig, slack_api: FakeSlackAPI
) -> None:
    rig = make_rig(sqlite_store, loops=False)  # no workers: the row stays as the ack left it
    rig.slack.store_wait = 10.0  # a loaded test machine must not turn this into the slow-database path

    response = rig.command("Monitor flickers", trigger_id="first-1")

    assert response.status_code == 200 and "filing your request" in response.text
    # Read at once, with no waiting: the ack came after the commit.
    [row] = sqlite_store.list_inbound(status=None, limit=5)
    assert row.dedupe_key == "slack:trigger:first-1" and row.status is InboundStatus.RECEIVED


def test_a_failed_store_write_is_answered_in_the_ack(
    sqlite_store: SqlStore, make_rig: MakeRig, slack_api: FakeSlackAPI
) -> None:
    rig = make_rig(sqlite_store, loops=False)
    rig.slack.store_wait = 10.0
    with sqlite_store.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE inbound_messages")  # the database refuses every write from now on

    response = rig.command("Need a new keyboard", trigger_id="lost-1")

    assert response.status_code == 200
    assert "could not save your request" in response.text  # not "Got it": the user knows to try again
    assert "filing" not in response.text
    assert slack_api.calls("respond") == []  # said once, in the ack


def test_a_failed_form_submission_keeps_the_form_open(
    sqlite_store: SqlStore, make_rig: MakeRig, slack_api: FakeSlackAPI
) -> None:
    rig = make_rig(sqlite_store, loops=False)
    rig.slack.store_wait = 10.0
    rig.command("", trigger_id="form-2")
    [opened] = slack_api.wait_for("views.open")
    with sqlite_store.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE inbound_messages")

    refused = rig.interact(view_submission(slack_api, opened.params["view"], title="Desk", description="Wobbly."))

    assert refused.status_code == 200
    assert refused.json()["response_action"] == "errors"
    assert "could not save your request" in refused.json()["errors"]["description"]


def test_a_stalled_database_gets_the_ack_out_and_the_request_stored_after(
    tmp_path: Path, make_rig: MakeRig, slack_api: FakeSlackAPI
) -> None:
    # SQLite's write lock held by another connection: the commit waits (busy_timeout) until it is released.
    store = SqlStore(make_engine(f"sqlite:///{tmp_path / 'stall.db'}"))
    upgrade(store.engine)
    rig = make_rig(store)
    rig.slack.store_wait = 0.2
    blocker = sqlite3.connect(tmp_path / "stall.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        response = rig.command("Printer jammed", trigger_id="stall-1")
        assert response.status_code == 200 and "filing your request" in response.text
        assert store.list_inbound(status=None, limit=5) == []  # acknowledged before the commit could land
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()

    [answer] = slack_api.wait_for("respond", _path="/respond/stall-1", timeout=20)
    assert answer.params["text"] == "Ticket #1 opened → IT Support (medium)"
    assert len(rig.tickets()) == 1


def test_an_expired_response_url_falls_back_to_ephemeral_then_dm(
    sqlite_store: SqlStore, make_rig: MakeRig, slack_api: FakeSlackAPI
) -> None:
    slack_api.add_channel("C0ASK", "ask-anything")
    rig = make_rig(sqlite_store)
    slack_api.fail("respond", status=404, body="expired_url", times=2)

    rig.command("Mouse is broken", trigger_id="exp-1")
    [ephemeral] = slack_api.wait_for("chat.postEphemeral")
    assert (ephemeral.params["channel"], ephemeral.params["user"]) == ("C0ASK", "U0ANA")
    assert ephemeral.params["text"] == "Ticket #1 opened → IT Support (medium)"

    rig.command("Mouse still broken", trigger_id="exp-2", channel="C0PRIVATE")  # a channel the bot is not in
    [dm] = slack_api.wait_for("chat.postMessage", channel="U0ANA")
    assert dm.params["text"] == "Ticket #2 opened → IT Support (medium)"
