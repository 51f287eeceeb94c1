"""Benchmark: `/ticket` ack latency on the real HTTP endpoint while a slow classifier works, and time to the post.

200 signed `/ticket` requests at concurrency 20 go to the bot's real HTTP server (uvicorn + Bolt). Behind it run
the real SQLite store (in a temporary directory), the real inbound worker loops with a classifier that takes 2 s
per ticket, and the real outbox dispatcher delivering to the fake Slack Web API (tests/fakes/slack_api.py).

Prints ack latency (p50/p99/max, how many over Slack's 3 s), the time from each request to its department-channel
card (p50/p99), and checks that every ticket was posted exactly once and answered once. Targets: p99 ack < 300 ms,
none over 3 s, every ticket posted once; the exit status is 1 when a target is missed.

Run from the repository root:  python bench/slack_ack.py  [--requests 200 --concurrency 20 --classify 2 --workers 20]
"""

from __future__ import annotations

import argparse
import logging
import math
import multiprocessing
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from core.classify.base import Classification  # noqa: E402
from core.ticket import Priority  # noqa: E402
from storage.db import make_engine, upgrade  # noqa: E402
from storage.store import SqlStore  # noqa: E402
from tests.fakes.slack_api import CHANNELS, Call, FakeSlackAPI, SlackRig, command_body, signed_headers  # noqa: E402

REQUESTS = [
    ("IT Support", "My laptop will not start after the update"),
    ("HR", "Question about my payslip and holiday allowance"),
    ("Facilities", "The heating on floor 3 is broken again"),
    ("Finance", "Expense claim for the Berlin trip was rejected"),
    ("General", "Who do I ask about the company newsletter?"),
]


@dataclass
class SlowClassifier:
    """Answers by the first word it recognises, after ``delay`` seconds (Claude's latency, roughly)."""

    delay: float
    name: str = "bench"

    def classify(self, subject: str, body: str) -> Classification:
        time.sleep(self.delay)
        department = next((d for d, text in REQUESTS if text.split()[1] in subject), "General")
        return Classification(department, Priority.MEDIUM, 0.9, subject[:80], self.name, model="sleep")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--classify", type=float, default=2.0, help="seconds per classification")
    parser.add_argument("--workers", type=int, default=20, help="inbound worker threads")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    with tempfile.TemporaryDirectory(prefix="slack-ack-") as tmp, FakeSlackAPI() as api:
        engine = make_engine(f"sqlite:///{Path(tmp) / 'ticketbot.db'}")
        upgrade(engine)
        store = SqlStore(engine)
        # The shipped defaults: workers poll every 0.5 s (and are woken by each new request), the outbox every 1 s.
        rig = SlackRig(
            api,
            store,
            mode="http",
            classifier=SlowClassifier(args.classify),
            workers=args.workers,
            poll=0.5,
            outbox_poll=1.0,
        ).start()
        try:
            return run(rig, api, store, args)
        finally:
            rig.stop()
            engine.dispose()


def send_all(url: str, requests: list[tuple[str, str]], concurrency: int) -> list[tuple[str, float, float, int, str]]:
    """Post the signed bodies at ``concurrency``; (trigger, start, latency, status, text) per request.

    Runs in its own process, like Slack's servers would: the load generator does not compete with the bot for the
    GIL. time.monotonic() is the system-wide monotonic clock, so its readings compare with the bot's.
    """
    results = []
    lock = threading.Lock()
    with httpx.Client(timeout=30, limits=httpx.Limits(max_connections=concurrency)) as client:

        def one(item: tuple[str, str]) -> None:
            trigger, body = item
            headers = signed_headers(body)
            start = time.monotonic()
            response = client.post(url, content=body.encode(), headers=headers)
            latency = time.monotonic() - start
            with lock:
                results.append((trigger, start, latency, response.status_code, response.text[:80]))

        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            list(pool.map(one, requests))
    return results


def run(rig: SlackRig, api: FakeSlackAPI, store: SqlStore, args: argparse.Namespace) -> int:
    requests = []
    for n in range(args.requests):
        trigger = f"bench-{n:04d}"
        _, text = REQUESTS[n % len(REQUESTS)]
        requests.append((trigger, urlencode(command_body(api, f"{text} (#{n})", trigger_id=trigger, user=f"U{n:05d}"))))

    began = time.monotonic()
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as client:
        results = client.submit(send_all, rig.events_url, requests, args.concurrency).result()
    sending = time.monotonic() - began
    sent = {trigger: start for trigger, start, *_ in results}
    acks = {trigger: latency for trigger, _, latency, *_ in results}
    failures = [
        f"{trigger}: HTTP {status} {text}"
        for trigger, _, _, status, text in results
        if status != 200 or "filing your request" not in text
    ]

    posts = wait_for_posts(api, args.requests, timeout=60 + args.requests * args.classify / max(1, args.workers) * 3)
    rig.wait_outbox_idle(timeout=30)

    trigger_of = {
        i.ticket_id: i.dedupe_key.removeprefix("slack:trigger:")
        for i in store.list_inbound(status=None, limit=args.requests * 2)
        if i.ticket_id is not None
    }
    per_ticket: dict[int, list[float]] = {}
    for call in posts:
        per_ticket.setdefault(int(call.params["metadata"]["event_payload"]["ticket_id"]), []).append(call.at)
    to_post = [min(times) - sent[trigger_of[tid]] for tid, times in per_ticket.items() if tid in trigger_of]
    wall_offset = time.time() - time.monotonic()
    created = {t.id: t.created_at.timestamp() - wall_offset for t in rig.tickets()}
    routed_to_post = [min(times) - created[tid] for tid, times in per_ticket.items() if tid in created]
    answers = len(api.calls("respond"))
    tickets = len(rig.tickets())
    once = tickets == args.requests and len(per_ticket) == tickets and all(len(t) == 1 for t in per_ticket.values())

    latencies = [v * 1000 for v in acks.values()]
    over = sum(1 for v in acks.values() if v > 3.0)
    p99 = percentile(latencies, 99)
    print(
        f"slack_ack: {args.requests} signed /ticket requests over HTTP, concurrency {args.concurrency}, "
        f"classifier {args.classify:g} s, {args.workers} inbound worker threads, SQLite, fake Slack Web API"
    )
    print(
        f"sent in {sending:.2f} s by a separate load-generator process ({args.requests / sending:.0f} req/s, "
        f"including its start-up); failures: {len(failures)}"
    )
    for failure in failures[:5]:
        print(f"  {failure}")
    print(
        f"ack latency: p50 {percentile(latencies, 50):.1f} ms  p99 {p99:.1f} ms  max {max(latencies):.1f} ms  "
        f"over 3 s: {over}"
    )
    if to_post:
        print(
            f"request -> department post: p50 {percentile(to_post, 50):.2f} s  p99 {percentile(to_post, 99):.2f} s  "
            f"max {max(to_post):.2f} s"
        )
        print(
            f"ticket stored (classified) -> department post: p50 {percentile(routed_to_post, 50):.2f} s  "
            f"p99 {percentile(routed_to_post, 99):.2f} s"
        )
    print(
        f"tickets {tickets}, department posts {len(posts)} for {len(per_ticket)} tickets, requester answers {answers}"
    )
    checks = {
        "p99 ack < 300 ms": p99 < 300,
        "zero acks over 3 s": over == 0 and not failures,
        "every ticket posted exactly once": once and answers == args.requests,
    }
    print("targets: " + "; ".join(f"{name}: {'PASS' if ok else 'FAIL'}" for name, ok in checks.items()))
    return 0 if all(checks.values()) else 1


def wait_for_posts(api: FakeSlackAPI, count: int, timeout: float) -> list[Call]:
    """The department-channel cards (top-level posts in a department channel), once ``count`` have arrived."""
    channels = set(CHANNELS.values())
    deadline = time.monotonic() + timeout
    while True:
        cards = [
            c
            for c in api.calls("chat.postMessage")
            if c.params.get("channel") in channels and not c.params.get("thread_ts")
        ]
        if len(cards) >= count or time.monotonic() > deadline:
            time.sleep(0.5)  # a duplicate would arrive right after: give it the chance to be counted
            return [
                c
                for c in api.calls("chat.postMessage")
                if c.params.get("channel") in channels and not c.params.get("thread_ts")
            ]
        time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main())
