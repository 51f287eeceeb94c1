"""`ticketbot run` as a real process: starts every component, logs one line each, stops within 5 s on a signal."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fakes import slack_api as fakes
from tests.fakes.slack_api import BOT_TOKEN, SIGNING_SECRET, TRIAGE, FakeSlackAPI, command_body, signed_headers

ROOT = Path(__file__).resolve().parents[2]
slack_env = fakes.slack_env
slack_api = fakes.slack_api


def start(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "run"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def read_until(proc: subprocess.Popen[str], needle: str, timeout: float = 60) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip())
        if needle in line:
            return lines
    raise AssertionError(f"{needle!r} never appeared; output:\n" + "\n".join(lines))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_run_starts_each_component_and_stops_cleanly(bot_env: dict[str, str], signum: signal.Signals) -> None:
    proc = start(bot_env)
    try:
        lines = read_until(proc, "ticketbot is running")
        started = [line.split("started ", 1)[1] for line in lines if "started " in line]
        assert {"inbound-worker-1", "outbox-dispatcher", "scheduler"} <= set(started)
        assert any("running without Slack" in line for line in lines)
        sent = time.monotonic()
        proc.send_signal(signum)
        rest, _ = proc.communicate(timeout=10)
        assert proc.returncode == 0, rest
        assert time.monotonic() - sent < 5
        assert "shut down in" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (Path(bot_env["TICKETBOT_DATA_DIR"]) / "ticketbot.db").exists()


def test_run_refuses_a_bad_config_with_a_clear_message(bot_env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("routing:\n  confidence_threshold: 5\n")
    proc = subprocess.run(
        [sys.executable, "-m", "bot.cli", "--config", str(bad), "run"],
        cwd=ROOT,
        env=bot_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "routing.confidence_threshold" in proc.stderr


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_run_with_slack_tokens_serves_ticket_over_http(bot_env: dict[str, str], slack_api: FakeSlackAPI) -> None:
    """The composition root wires Slack: a signed /ticket reaches `ticketbot run`, which answers and posts."""
    import urllib.parse
    import urllib.request

    slack_api.add_channel(TRIAGE, "triage")
    port = free_port()
    env = {
        **bot_env,
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "TICKETBOT_SLACK__MODE": "http",
        "TICKETBOT_SLACK__API_URL": slack_api.api_url,
        "TICKETBOT_SLACK__TRIAGE_CHANNEL": TRIAGE,
        "TICKETBOT_HTTP__PORT": str(port),
    }
    proc = start(env)
    try:
        read_until(proc, "ticketbot is running")
        body = urllib.parse.urlencode(command_body(slack_api, "My laptop won't boot", trigger_id="trig-run-1"))
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/slack/events", data=body.encode(), headers=signed_headers(body), method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
        [answer] = slack_api.wait_for("respond", timeout=30)
        assert answer.params["text"].startswith("Ticket #1 opened → IT Support")
        # No department has a channel of its own here, so the card goes to the triage channel.
        slack_api.wait_for("chat.postMessage", timeout=30, channel=TRIAGE)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
