"""Socket Mode against the fakes: apps.connections.open on the fake Web API hands out the fake WebSocket server's
URL; envelopes go in over the socket, acks come back over it, and the ticket's answer goes to the response_url."""

from __future__ import annotations

import json

from storage.store import SqlStore
from tests.fakes import slack_api as fake
from tests.fakes.slack_api import IT_AGENT, FakeSlackAPI, FakeSocketModeServer, MakeRig, action_payload, command_body

slack_env = fake.slack_env
slack_api = fake.slack_api
socket_mode_server = fake.socket_mode_server
make_rig = fake.make_rig


def test_a_slash_command_round_trip_over_socket_mode(
    sqlite_store: SqlStore, make_rig: MakeRig, slack_api: FakeSlackAPI, socket_mode_server: FakeSocketModeServer
) -> None:
    rig = make_rig(sqlite_store, mode="socket")
    assert rig.http is None  # no public endpoint needed
    assert rig.slack.connected.wait(5)
    socket_mode_server.wait_connected()
    assert rig.slack.ready()
    [opened] = slack_api.calls("apps.connections.open")
    assert opened.headers["authorization"] == f"Bearer {fake.APP_TOKEN}"  # the app-level token, not the bot's

    command = command_body(slack_api, "Wi-Fi drops on floor 2", trigger_id="sock-1")
    envelope = socket_mode_server.send("slash_commands", command)

    ack = socket_mode_server.wait_ack(envelope)
    assert "filing your request" in json.dumps(ack.get("payload"), ensure_ascii=False)
    [answer] = slack_api.wait_for("respond", _path="/respond/sock-1")
    assert answer.params["text"] == "Ticket #1 opened → IT Support (medium)"
    assert socket_mode_server.acked_at[envelope] < answer.at

    # Slack redelivers the envelope (retry_attempt): acknowledged again, no second ticket.
    retry = socket_mode_server.send("slash_commands", command, retry_attempt=1, retry_reason="timeout")
    socket_mode_server.wait_ack(retry)
    [card] = slack_api.wait_for("chat.postMessage", channel="C0IT")
    ticket_id = card.params["metadata"]["event_payload"]["ticket_id"]

    # A card button over the socket as well.
    click = socket_mode_server.send(
        "interactive", action_payload(slack_api, "ticket_claim", str(ticket_id), user=IT_AGENT)
    )
    socket_mode_server.wait_ack(click)
    rig.wait_until(lambda: (t := sqlite_store.get_ticket(ticket_id)) and t.assignee == IT_AGENT, what="the claim")
    rig.wait_outbox_idle()
    assert len(rig.tickets()) == 1
    assert len(slack_api.calls("respond")) == 1
