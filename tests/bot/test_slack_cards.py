"""Department channel cards: posting, in-place updates, agent actions and permissions, thread notes, requester
DMs, delivery errors (429, unreachable channels) and mrkdwn escaping, against the fake Slack Web API."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from core.message import Channel, Message
from core.outbox import OutboxStatus
from core.ticket import EventKind, Status, Ticket
from storage.store import SqlStore
from tests.fakes import slack_api as fake
from tests.fakes.classifier import ScriptedClassifier
from tests.fakes.slack_api import (
    ADMIN,
    ADMIN_USER,
    IT_AGENT,
    TRIAGE,
    FakeSlackAPI,
    MakeRig,
    SlackRig,
    action_payload,
)

slack_env = fake.slack_env
slack_api = fake.slack_api
make_rig = fake.make_rig


def open_ticket(
    rig: SlackRig, text: str = "Laptop will not start", *, trigger: str = "t1"
) -> tuple[Ticket, dict[str, Any]]:
    """File a ticket through /ticket and wait until its card is in the department channel."""
    rig.command(text, trigger_id=trigger)
    rig.wait_until(lambda: rig.tickets(), what="the ticket")
    rig.wait_outbox_idle()
    ticket = rig.tickets()[-1]
    channel = fake.CHANNELS[ticket.department]
    return ticket, rig.api.posts(channel)[-1]


def email(source_id: str, subject: str, body: str, *, refs: tuple[str, ...] = ()) -> Message:
    return Message(
        channel=Channel.EMAIL,
        source_id=source_id,
        sender="ana@example.com",
        sender_name="Ana",
        subject=subject,
        body=body,
        received_at=datetime.now(UTC),
        thread_refs=refs,
    )


def click(rig: SlackRig, action_id: str, value: str, *, user: str, trigger: str) -> None:
    """A signed click on a card control (its ephemeral answer, if any, goes to /respond/action-<trigger>)."""
    response = rig.interact(action_payload(rig.api, action_id, value, user=user, trigger_id=trigger))
    assert response.status_code == 200 and response.text == ""


def rendered(api: FakeSlackAPI) -> str:
    """Everything the bot asked Slack to show, as one JSON text."""
    shown = [
        {"text": c.params.get("text"), "blocks": c.params.get("blocks")}
        for c in api.calls()
        if c.method in ("chat.postMessage", "chat.update", "chat.postEphemeral", "respond")
    ]
    return json.dumps(shown, ensure_ascii=False)


def test_a_card_shows_the_ticket_and_offers_claim_status_and_reroute(
    sqlite_store: SqlStore, make_rig: MakeRig, slack_api: FakeSlackAPI
) -> None:
    rig = make_rig(sqlite_store)

    ticket, card = open_ticket(rig)

    assert card["text"] == f"Ticket #{ticket.id} · IT Support · medium · New: Laptop will not start"
    blocks = json.dumps(card["blocks"], ensure_ascii=False)
    for shown in ("<@U0ANA>", "IT Support", "medium", "90% · scripted (scripted-1)", "_unassigned_", "New"):
        assert shown in blocks
    [actions] = [b for b in card["blocks"] if b["type"] == "actions"]
    assert [e["action_id"] for e in actions["elements"]] == ["ticket_claim", "ticket_status", "ticket_reroute"]
    reroute_to = [o["value"] for o in actions["elements"][2]["options"]]
    assert f"{ticket.id}:Finance" in reroute_to and f"{ticket.id}:IT Support" not in reroute_to


def test_claim_status_and_reroute_update_the_card_record_events_and_tell_the_requester(
    sqlite_store: SqlStore, make_rig: MakeRig, slack_api: FakeSlackAPI
) -> None:
    rig = make_rig(sqlite_store)
    ticket, card = open_ticket(rig)

    click(rig, "ticket_claim", str(ticket.id), user=IT_AGENT, trigger="a1")
    rig.wait_until(lambda: "<@U0AGENT>" in json.dumps(slack_api.posts("C0IT")[0]["blocks"]), what="claimed card")
    assert sqlite_store.get_ticket(ticket.id).assignee == IT_AGENT  # type: ignore[union-attr]

    click(rig, "ticket_status", f"{ticket.id}:resolved", user=IT_AGENT, trigger="a2")
    [note] = slack_api.wait_for("chat.postMessage", channel="C0IT", thread_ts=card["ts"])
    assert "New → *Resolved* by <@U0AGENT>" in note.params["text"]
    [dm] = slack_api.wait_for("chat.postMessage", channel="U0ANA")
    assert f"Your ticket *#{ticket.id}*" in dm.params["text"] and "*resolved*" in dm.params["text"]
    rig.wait_until(lambda: "Resolved" in json.dumps(slack_api.posts("C0IT")[0]["blocks"]), what="resolved card")

    click(rig, "ticket_reroute", f"{ticket.id}:Finance", user=ADMIN_USER, trigger="a3")
    [moved] = slack_api.wait_for("chat.postMessage", channel="C0FIN")
    assert moved.params["text"].startswith(f"Ticket #{ticket.id} · Finance")
    rig.wait_until(
        lambda: "Now handled by *Finance*" in json.dumps(slack_api.posts("C0IT")[0]["blocks"]), what="old card"
    )
    rig.wait_outbox_idle()

    assert len(slack_api.posts("C0IT")) == 1  # updated in place, never posted again
    changes = [(e.kind, e.actor, e.data.get("to")) for e in sqlite_store.ticket_events(ticket.id)][3:]
    assert changes == [
        (EventKind.ASSIGNED, IT_AGENT, IT_AGENT),
        (EventKind.STATUS, IT_AGENT, "resolved"),
        (EventKind.REROUTED, ADMIN_USER, "Finance"),
    ]
    assert sqlite_store.corrections() == [(ticket.id, ticket.subject, ticket.body, "Finance")]  # a correction
    assert all(i.status is OutboxStatus.SENT for i in sqlite_store.list_outbox())

    click(rig, "ticket_claim", str(ticket.id), user=ADMIN_USER, trigger="a4")
    click(rig, "ticket_claim", str(ticket.id), user=ADMIN_USER, trigger="a5")
    [already] = slack_api.wait_for("respond", _path="/respond/action-a5")
    assert "already yours" in already.params["text"]


def test_a_user_group_member_may_act_on_their_department(
    sqlite_store: SqlStore, make_rig: MakeRig, slack_api: FakeSlackAPI
) -> None:
    rig = make_rig(sqlite_store, classifier=ScriptedClassifier(department="HR"))
    ticket, _ = open_ticket(rig, "Payslip is missing")

    click(rig, "ticket_claim", str(ticket.id), user="U0HRAGENT", trigger="g1")
    click(rig, "ticket_status", f"{ticket.id}:waiting", user="U0HRAGENT", trigger="g2")

    rig.wait_until(lambda: (t := sqlite_store.get_ticket(ticket.id)) and t.status is Status.WAITING, what="waiting")
    assert sqlite_store.get_ticket(ticket.id).assignee == "U0HRAGENT"  # type: ignore[union-attr]
    assert len(slack_api.calls("usergroups.users.list", usergroup="S0HR")) == 1  # cached between the clicks


def test_a_click_from_anyone_else_is_refused_and_changes_nothing(
    sqlite_store: SqlStore, make_rig: MakeRig, slack_api: FakeSlackAPI
) -> None:
    rig = make_rig(sqlite_store, classifier=ScriptedClassifier(department="HR"))
    ticket, _ = open_ticket(rig, "Payslip is missing")
    before = (sqlite_store.get_ticket(ticket.id), sqlite_store.ticket_events(ticket.id), sqlite_store.list_outbox())
    updates_before = len(slack_api.calls("chat.update"))

    attempts = [
        ("ticket_claim", str(ticket.id), "U0NOBODY"),
        ("ticket_status", f"{ticket.id}:closed", "U0NOBODY"),
        ("ticket_reroute", f"{ticket.id}:Finance", "U0NOBODY"),
        ("ticket_claim", str(ticket.id), IT_AGENT),  # an agent, but of another department
    ]
    for n, (action_id, value, user) in enumerate(attempts):
        click(rig, action_id, value, user=user, trigger=f"x{n}")
        [refusal] = slack_api.wait_for("respond", _path=f"/respond/action-x{n}")
        assert refusal.params["text"] == f":no_entry: Only HR agents and admins can change ticket #{ticket.id}."
        assert refusal.params["response_type"] == "ephemeral" and refusal.params["replace_original"] is False

    rig.wait_outbox_idle()
    after = (sqlite_store.get_ticket(ticket.id), sqlite_store.ticket_events(ticket.id), sqlite_store.list_outbox())
    assert after == before
    assert len(slack_api.calls("chat.update")) == updates_before
    assert len(slack_api.posts("C0FIN")) == 0


def test_an_email_follow_up_is_posted_in_the_card_thread_and_refreshes_the_card(  # both engines
    store: SqlStore, make_rig: MakeRig, slack_api: FakeSlackAPI
) -> None:
    rig = make_rig(store)
    opened = rig.pipeline.handle(email("<m1@example.com>", "VPN down", "It fails since 9:00."))
    assert opened.ticket is not None
    slack_api.wait_for("chat.postMessage", channel="C0IT")
    card_ts = slack_api.posts("C0IT")[0]["ts"]
    store.change_status(opened.ticket.id, Status.RESOLVED, actor="cli", note=None, compose=lambda t: [])

    rig.pipeline.handle(email("<m2@example.com>", "Re: VPN down", "Still broken.", refs=("<m1@example.com>",)))

    [note] = slack_api.wait_for("chat.postMessage", channel="C0IT", thread_ts=card_ts)
    assert note.params["text"] == ":speech_balloon: *Follow-up* from Ana &lt;ana@example.com&gt;:\n>Still broken."
    rig.wait_until(lambda: "New" in json.dumps(slack_api.posts("C0IT")[0]["blocks"]), what="reopened card")
    rig.wait_outbox_idle()
    assert [p["text"][:9] for p in slack_api.posts("C0IT")] == ["Ticket #1"]


def test_a_rate_limited_post_is_retried_after_retry_after_and_posted_once(
    sqlite_store: SqlStore, make_rig: MakeRig, slack_api: FakeSlackAPI
) -> None:
    rig = make_rig(sqlite_store, loops=False)
    rig.pipeline.handle(email("<r1@example.com>", "Printer offline", "Floor 2"))
    slack_api.fail("chat.postMessage", status=429, retry_after=2, channel="C0IT")
    now = datetime.now(UTC)

    assert rig.dispatcher.run_once(now) == 1
    [item] = sqlite_store.list_outbox()
    assert item.status is OutboxStatus.PENDING and item.attempts == 1
    assert item.next_attempt_at >= now + timedelta(seconds=2)  # Retry-After honoured
    assert "rate limited" in (item.last_error or "")
    assert rig.dispatcher.run_once(now + timedelta(seconds=1)) == 0  # not due yet
    assert rig.dispatcher.run_once(now + timedelta(seconds=3)) == 1

    [item] = sqlite_store.list_outbox()
    assert item.status is OutboxStatus.SENT
    assert len(slack_api.calls("chat.postMessage", channel="C0IT")) == 2
    assert len(slack_api.posts("C0IT")) == 1


@pytest.mark.parametrize(
    ("fault", "status"),
    [
        ({"status": 500, "body": "<html>oops</html>"}, OutboxStatus.PENDING),
        ({"error": "invalid_auth"}, OutboxStatus.PENDING),  # an operator fixes the token: keep the post
        ({"error": "missing_scope"}, OutboxStatus.PENDING),
        ({"error": "invalid_blocks"}, OutboxStatus.PARKED),  # retrying cannot help
    ],
)
def test_slack_errors_are_retried_or_parked(
    sqlite_store: SqlStore, make_rig: MakeRig, slack_api: FakeSlackAPI, fault: dict[str, Any], status: OutboxStatus
) -> None:
    rig = make_rig(sqlite_store, loops=False)
    rig.pipeline.handle(email("<e1@example.com>", "Printer offline", "Floor 2"))
    slack_api.fail("chat.postMessage", **fault)

    rig.dispatcher.run_once(datetime.now(UTC))

    [item] = sqlite_store.list_outbox()
    assert item.status is status and item.last_error


def test_an_unreachable_channel_falls_back_to_triage_and_alerts_the_admins_once(
    sqlite_store: SqlStore, make_rig: MakeRig, slack_api: FakeSlackAPI, caplog: pytest.LogCaptureFixture
) -> None:
    rig = make_rig(sqlite_store, loops=False)
    slack_api.add_channel("C0IT", "it-support", member=False)
    rig.pipeline.handle(email("<n1@example.com>", "VPN down", "Since 9:00"))
    rig.pipeline.handle(email("<n2@example.com>", "Wi-Fi down", "Since 10:00"))
    rig.dispatcher.run_once(datetime.now(UTC))
    rig.dispatcher.run_once(datetime.now(UTC))  # the alert that the first fallback enqueued

    assert slack_api.posts("C0IT") == []
    cards = slack_api.posts(TRIAGE)
    assert len(cards) == 2
    assert "Posted here because <#C0IT> (IT Support) is unreachable: `not_in_channel`" in json.dumps(cards[0]["blocks"])
    [alert] = slack_api.posts(ADMIN)  # one alert for the broken channel, not one per ticket
    assert "<#C0IT>" in alert["text"] and "not_in_channel" in alert["text"] and f"<#{TRIAGE}>" in alert["text"]
    posts = [i for i in sqlite_store.list_outbox() if i.payload.get("event") == "created"]
    assert all(i.status is OutboxStatus.SENT and (i.sent_ref or "").startswith(f"{TRIAGE}:") for i in posts)
    assert "posting in triage channel" in caplog.text


def test_without_a_triage_channel_an_unreachable_post_is_parked(
    sqlite_store: SqlStore, make_rig: MakeRig, slack_api: FakeSlackAPI
) -> None:
    rig = make_rig(sqlite_store, loops=False, slack={"triage_channel": None})
    del slack_api.channels["C0IT"]
    rig.pipeline.handle(email("<p1@example.com>", "VPN down", "Since 9:00"))

    rig.dispatcher.run_once(datetime.now(UTC))

    [item] = sqlite_store.list_outbox()
    assert item.status is OutboxStatus.PARKED
    assert "channel_not_found" in (item.last_error or "") and "triage" in (item.last_error or "")


def test_untrusted_text_cannot_mention_broadcast_or_fake_a_link(
    sqlite_store: SqlStore, make_rig: MakeRig, slack_api: FakeSlackAPI
) -> None:
    rig = make_rig(sqlite_store)
    # Typed literally in Slack (Slack sends it to us encoded) and sent by email (raw).
    ticket, _ = open_ticket(rig, "<!channel> VPN down <@U0BOSS> & <http://evil.example|click here>")
    rig.pipeline.handle(email("<i1@example.com>", "<!here> invoice <@U0CEO>", "Pay: <https://evil.example|portal>"))
    rig.pipeline.change_status(ticket.id, Status.WAITING, actor=IT_AGENT, note="<!everyone> see <#C0SECRET>")
    slack_api.wait_for("chat.postMessage", channel="U0ANA")  # the requester's DM with the note
    rig.wait_outbox_idle()

    shown = rendered(slack_api)
    for markup in ("<!channel>", "<!here>", "<!everyone>", "<@U0BOSS>", "<@U0CEO>", "<#C0SECRET>", "<http", "<https"):
        assert markup not in shown
    assert "&lt;!channel&gt; VPN down &lt;@U0BOSS&gt; &amp; &lt;http://evil.example|click here&gt;" in shown
    assert "&lt;!here&gt; invoice" in shown and "&lt;!everyone&gt;" in shown
    texts = [t for c in slack_api.calls("chat.postMessage") for t in mrkdwn_objects(c.params.get("blocks") or [])]
    assert texts and all(t.get("verbatim") is True for t in texts)


def mrkdwn_objects(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, dict):
        found = [value] if value.get("type") == "mrkdwn" else []
        return found + [o for v in value.values() for o in mrkdwn_objects(v)]
    if isinstance(value, list):
        return [o for v in value for o in mrkdwn_objects(v)]
    return []


def test_the_startup_check_names_every_broken_channel(
    sqlite_store: SqlStore, make_rig: MakeRig, slack_api: FakeSlackAPI, caplog: pytest.LogCaptureFixture
) -> None:
    rig = make_rig(sqlite_store, start=False)
    slack_api.add_channel("C0HR", "hr", member=False)
    slack_api.add_channel("C0FAC", "facilities", archived=True)
    del slack_api.channels["C0FIN"]

    with caplog.at_level(logging.WARNING, logger="bot.slack_delivery"):
        problems = rig.slack.delivery.check_channels()

    assert problems == [
        "departments[HR].slack_channel: C0HR (#hr): the bot is not a member; invite it with /invite "
        "(public channels also work with the chat:write.public scope)",
        "departments[Facilities].slack_channel: C0FAC (#facilities) is archived",
        "departments[Finance].slack_channel: C0FIN: channel_not_found "
        "(no such channel, or a private channel the bot was not invited to)",
    ]
    assert caplog.text.count("slack: departments[") == 3


def test_a_started_bot_checks_its_token_and_channels(
    sqlite_store: SqlStore, make_rig: MakeRig, slack_api: FakeSlackAPI
) -> None:
    make_rig(sqlite_store, loops=False)

    slack_api.wait_for("auth.test")
    checked = {c.params["channel"] for c in slack_api.wait_for("conversations.info", count=7)}
    assert checked == {*fake.CHANNELS.values(), TRIAGE, ADMIN}
