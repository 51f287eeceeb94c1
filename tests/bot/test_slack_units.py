"""The Slack adapter's pure parts: mrkdwn escaping, Slack text decoding, `/ticket` parsing, the stored payload's
decoder, form validation, Slack error translation, permissions, and the wiring without tokens."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import SecretStr
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.web import SlackResponse

from bot.blocks import card_text, escape, modal_errors, plain_from_slack, ticket_card
from bot.slack import AgentDirectory, create_slack_app, slack_components, slack_outbox_kinds
from bot.slack_delivery import ChannelUnreachable, slack_error
from bot.slack_intake import Command, decode_slack, parse_command, record_from_command, record_from_shortcut
from core.config import Config, Secrets
from core.errors import ConfigError, DeliveryError, MalformedMessage, PermanentDeliveryError
from core.inbound import InboundStatus, StoredInbound
from core.message import Channel
from core.pipeline import Pipeline
from core.reply import ReplySettings
from core.route import Router
from core.ticket import Priority, Status, Ticket
from storage.store import SqlStore
from tests.fakes import slack_api as fake
from tests.fakes.classifier import ScriptedClassifier
from tests.fakes.slack_api import FakeSlackAPI

slack_env = fake.slack_env
slack_api = fake.slack_api
NOW = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)


def test_escape_neutralises_mentions_broadcasts_and_links() -> None:
    assert escape("<!here> <@U1> <#C1> <http://evil|click> a&b") == (
        "&lt;!here&gt; &lt;@U1&gt; &lt;#C1&gt; &lt;http://evil|click&gt; a&amp;b"
    )
    assert escape("&lt;") == "&amp;lt;"  # already-escaped text stays literal


def test_slack_text_becomes_plain_text() -> None:
    slack = "<!here> ask <@U1|bob> in <#C2|it> see <https://x.example/a|the doc> or <https://y.example> &lt;b&gt; &amp;"
    assert (
        plain_from_slack(slack) == "@here ask @bob in #it see the doc (https://x.example/a) or https://y.example <b> &"
    )
    assert plain_from_slack("<!subteam^S1|@it-team> help") == "@it-team help"
    assert plain_from_slack("<!subteam^S1> help <@U9>") == "@S1 help @U9"


@pytest.mark.parametrize(
    ("text", "command"),
    [
        ("", Command("modal")),
        ("  ", Command("modal")),
        ("help", Command("help")),
        ("status 12", Command("status", ticket_id=12)),
        ("Status #12", Command("status", ticket_id=12)),
        ("status", Command("help")),
        ("mine", Command("mine")),
        ("status of my laptop is bad", Command("create", text="status of my laptop is bad")),
        ("My VPN fails", Command("create", text="My VPN fails")),
    ],
)
def test_parse_command(text: str, command: Command) -> None:
    assert parse_command(text) == command


def stored(record: Any) -> StoredInbound:
    return StoredInbound(
        id=1,
        channel=record.channel,
        dedupe_key=record.dedupe_key,
        payload=record.payload,
        received_at=record.received_at,
        status=InboundStatus.RECEIVED,
        attempts=0,
    )


def test_a_command_decodes_to_a_message_with_its_reply_context(slack_api: FakeSlackAPI) -> None:
    long_line = "The projector in the big meeting room shows nothing but a blue screen since Monday"
    body = fake.command_body(slack_api, f"{long_line}\nTried another cable", trigger_id="tr-9")

    record = record_from_command(body)
    message = decode_slack(stored(record))

    assert (record.dedupe_key, record.trigger_id, record.channel) == ("slack:trigger:tr-9", "tr-9", Channel.SLACK)
    assert message.channel is Channel.SLACK and message.source_id == "slack:trigger:tr-9"
    assert (message.sender, message.sender_name) == ("U0ANA", "ana")
    assert message.subject == long_line[:59].rstrip() + "…" and len(message.subject) <= 60
    assert message.body == f"{long_line}\nTried another cable"
    assert message.reply_context == {
        "response_url": slack_api.response_url("tr-9"),
        "channel_id": "C0ASK",
        "user": "U0ANA",
    }


def test_a_shortcut_decodes_with_its_author_and_permalink() -> None:
    body = {
        "trigger_id": "sc-1",
        "user": {"id": "U0ANA", "name": "ana"},
        "channel": {"id": "C0ASK"},
        "response_url": "https://hooks.slack.com/x",
        "message": {"text": "Door &lt;B&gt; is stuck", "user": "U0BOB", "ts": "1.2"},
    }
    message = decode_slack(stored(record_from_shortcut(body, "https://example.slack.com/archives/C0ASK/p12")))
    assert message.subject == "Door <B> is stuck"
    assert (
        message.body
        == "Door <B> is stuck\n\n(From a Slack message by @U0BOB https://example.slack.com/archives/C0ASK/p12)"
    )


@pytest.mark.parametrize("payload", [b"not json", b"[]", b'{"text": "no user"}', b"\xff\xfe"])
def test_a_foreign_payload_is_malformed(payload: bytes) -> None:
    row = StoredInbound(1, Channel.SLACK, "k", payload, NOW, InboundStatus.RECEIVED, 0)
    with pytest.raises(MalformedMessage):
        decode_slack(row)


def test_form_validation_names_each_bad_field() -> None:
    assert modal_errors({"title": "VPN down", "description": "Since 9", "urgency": "high"}) == {}
    errors = modal_errors({"title": "ab", "description": "  ", "urgency": "whenever"})
    assert set(errors) == {"title", "description", "urgency"}
    assert set(modal_errors({"title": "x" * 151, "description": "y" * 3001, "urgency": "low"})) == {
        "title",
        "description",
    }


def ticket(**kw: Any) -> Ticket:
    values: dict[str, Any] = {
        "id": 7,
        "subject": "Invoice <!here>",
        "body": "Pay <https://evil|here> & now",
        "requester": "ana@example.com",
        "requester_name": "Ana <CEO>",
        "channel": Channel.EMAIL,
        "department": "Finance",
        "priority": Priority.HIGH,
        "status": Status.NEW,
        "confidence": 0.42,
        "summary": "Invoice <@U1> question",
        "classifier": "claude",
        "classifier_model": "claude-haiku-4-5",
        "created_at": NOW,
        "updated_at": NOW,
        "triaged": True,
    }
    values.update(kw)
    return Ticket(**values)


def test_a_card_escapes_every_field_and_names_its_classifier() -> None:
    blocks = json.dumps([card_text(ticket()), ticket_card(ticket(), ["IT Support", "Finance"])], ensure_ascii=False)
    assert "<!here>" not in blocks and "<@U1>" not in blocks and "<https://evil" not in blocks and "<CEO>" not in blocks
    assert "Ana &lt;CEO&gt; &lt;ana@example.com&gt;" in blocks
    assert "42% · claude (claude-haiku-4-5)" in blocks and "triage: low confidence" in blocks
    assert '"value": "7:IT Support"' in blocks and '"value": "7:Finance"' not in blocks


def api_error(status: int, data: dict[str, Any], headers: dict[str, str] | None = None) -> SlackApiError:
    response = SlackResponse(
        client=WebClient(),
        http_verb="POST",
        api_url="https://slack.com/api/chat.postMessage",
        req_args={},
        data=data,
        headers=headers or {},
        status_code=status,
    )
    return SlackApiError("failed", response)  # type: ignore[no-untyped-call]


def test_slack_errors_become_delivery_errors() -> None:
    limited = slack_error(api_error(429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "7"}), "post")
    assert type(limited) is DeliveryError and limited.retry_after == 7.0
    unreachable = slack_error(api_error(200, {"ok": False, "error": "is_archived"}), "post", "C1")
    assert isinstance(unreachable, ChannelUnreachable) and unreachable.error == "is_archived"
    assert type(slack_error(api_error(503, {}), "post")) is DeliveryError
    assert type(slack_error(api_error(200, {"ok": False, "error": "token_revoked"}), "post")) is DeliveryError
    assert type(slack_error(api_error(200, {"ok": False, "error": "msg_too_long"}), "post")) is PermanentDeliveryError


def test_user_group_members_are_cached_and_a_failure_refuses(slack_api: FakeSlackAPI) -> None:
    now = [0.0]
    config = Config(
        departments=[{"name": "HR", "agent_usergroup": "S0HR", "agents": ["U0LEAD"]}, {"name": "General"}],
        slack={"admins": ["U0ADMIN"]},
    )
    client = WebClient(token=fake.BOT_TOKEN, base_url=slack_api.api_url)
    directory = AgentDirectory(config=config, client=client, ttl=60, clock=lambda: now[0])
    slack_api.usergroups["S0HR"] = ["U0HR"]

    assert directory.may_act("U0HR", "HR") and directory.may_act("U0LEAD", "HR") and directory.may_act("U0ADMIN", "HR")
    assert not directory.may_act("U0HR", "General") and not directory.may_act("U0BOB", "HR")
    assert directory.is_agent("U0HR") and not directory.is_agent("U0BOB")
    assert len(slack_api.calls("usergroups.users.list")) == 1

    now[0] = 61
    slack_api.fail("usergroups.users.list", error="internal_error")
    assert directory.may_act("U0HR", "HR")  # Slack failed: the last known members still count
    fresh = AgentDirectory(config=config, client=client)
    slack_api.fail("usergroups.users.list", status=500, body="down")
    assert not fresh.may_act("U0HR", "HR")  # never known: refuse


def pipeline(store: SqlStore) -> Pipeline:
    return Pipeline(
        store=store,
        classifier=ScriptedClassifier(),
        router=Router(["IT Support", "General"], "General", 0.35),
        replies=ReplySettings(),
    )


def test_without_a_bot_token_there_is_no_slack_but_stored_requests_still_decode(sqlite_store: SqlStore) -> None:
    secrets = Secrets(slack_bot_token=None, slack_app_token=None, slack_signing_secret=None)

    senders, components, decoders = slack_components(Config(), secrets, sqlite_store, pipeline(sqlite_store))

    assert senders == {} and components == [] and decoders == {Channel.SLACK: decode_slack}
    assert slack_outbox_kinds(secrets) == set()


@pytest.mark.parametrize(
    ("mode", "missing", "message"),
    [("socket", "slack_app_token", "SLACK_APP_TOKEN"), ("http", "slack_signing_secret", "SLACK_SIGNING_SECRET")],
)
def test_each_mode_demands_its_secret(sqlite_store: SqlStore, mode: str, missing: str, message: str) -> None:
    values: dict[str, Any] = {
        "slack_bot_token": SecretStr("xoxb-1"),
        "slack_app_token": SecretStr("xapp-1"),
        "slack_signing_secret": SecretStr("s3cret"),
    }
    values[missing] = None
    with pytest.raises(ConfigError, match=message):
        create_slack_app(
            config=Config(slack={"mode": mode}),
            secrets=Secrets.model_validate(values),
            store=sqlite_store,
            pipeline=pipeline(sqlite_store),
        )
