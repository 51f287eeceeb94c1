"""Bench for the classify step: ClaudeClassifier throughput and failure behaviour against the fake Messages API.

Run from the repo root: ``python bench/classify_claude.py``. The fake answers after 800 ms, like a real
Haiku call; the classifier uses the ``classifier.claude`` defaults from config except concurrency 16.
"""

from __future__ import annotations

import logging
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.classify.base import Classification, Classifier  # noqa: E402
from core.classify.claude import ClaudeClassifier  # noqa: E402
from core.classify.fallback import FallbackClassifier  # noqa: E402
from core.config import DEFAULT_DEPARTMENTS, ClaudeConfig  # noqa: E402
from tests.fakes.anthropic_api import FakeAnthropicAPI, server_error, tool_call  # noqa: E402
from tests.fakes.classifier import ScriptedClassifier  # noqa: E402

LATENCY = 0.8
CONCURRENCY = 16
TICKETS = 160
TEXTS = [
    ("VPN keeps dropping", "Since this morning my VPN disconnects every few minutes."),
    ("Expense claim", "How do I claim back a taxi from last week's client visit?"),
    ("Heating broken", "The heating on the 4th floor has been off since Monday."),
    ("Payslip wrong", "My payslip for October shows the wrong tax code."),
    ("Printer", "The printer on floor 2 is out of toner."),
]


def offline_classifier() -> tuple[Classifier, str]:
    """The real offline model when it exists in this checkout, else a scripted stand-in."""
    names = [d.name for d in DEFAULT_DEPARTMENTS]
    try:
        from core.classify.offline import OfflineClassifier  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return ScriptedClassifier(name="offline", department="General"), "ScriptedClassifier (offline not built yet)"
    classifier: Classifier = OfflineClassifier.load(None, names)
    return classifier, "core.classify.offline.OfflineClassifier"


def make_claude(url: str) -> ClaudeClassifier:
    defaults = ClaudeConfig()
    return ClaudeClassifier(
        departments=DEFAULT_DEPARTMENTS,
        api_key="sk-ant-bench",
        base_url=url,
        model=defaults.model,
        max_tokens=defaults.max_tokens,
        timeout=defaults.timeout_seconds,
        max_retries=defaults.max_retries,
        concurrency=CONCURRENCY,
        daily_token_budget=defaults.daily_token_budget,
        circuit_failures=defaults.circuit_failures,
        circuit_reset_seconds=defaults.circuit_reset_seconds,
    )


def run(classify: Callable[[str, str], Classification], count: int) -> tuple[list[Classification], list[float], float]:
    """Classify ``count`` tickets from CONCURRENCY threads; results, per-ticket latencies (s) and wall time."""

    def one(i: int) -> tuple[Classification, float]:
        subject, body = TEXTS[i % len(TEXTS)]
        started = time.perf_counter()
        result = classify(f"{subject} #{i}", body)
        return result, time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
        done = list(pool.map(one, range(count)))
    return [r for r, _ in done], [t for _, t in done], time.perf_counter() - started


def row(phase: str, results: list[Classification], latencies: list[float], wall: float) -> str:
    cuts = statistics.quantiles(latencies, n=20, method="inclusive")
    by_claude = sum(r.classifier == "claude" for r in results)
    p50, p95 = statistics.median(latencies) * 1000, cuts[18] * 1000
    return (
        f"{phase:<32} {len(results):>7} {wall:>7.2f} {len(results) / wall:>9.1f} "
        f"{p50:>8.1f} {p95:>8.1f} {by_claude:>6} {len(results) - by_claude:>8}"
    )


def main() -> None:
    logging.basicConfig(level=logging.ERROR)  # circuit transitions are reported in the table instead
    offline, offline_name = offline_classifier()
    columns = (
        ("tickets", 7),
        ("wall s", 7),
        ("tickets/s", 9),
        ("p50 ms", 8),
        ("p95 ms", 8),
        ("claude", 6),
        ("fallback", 8),
    )
    header = f"{'phase':<32} " + " ".join(f"{name:>{width}}" for name, width in columns)
    with FakeAnthropicAPI(latency=LATENCY, default=tool_call("IT Support")) as api:
        print(f"fake Messages API at {api.url}, {LATENCY * 1000:.0f} ms per answer; fallback: {offline_name}")
        print(f"ClaudeClassifier: concurrency {CONCURRENCY}, other settings from ClaudeConfig() defaults")
        print(header)
        print("-" * len(header))

        # 1. healthy API: throughput at the configured concurrency
        claude = make_claude(api.url)
        intake = FallbackClassifier(primary=claude, fallback=offline, deadline=20.0, workers=CONCURRENCY)
        results, latencies, wall = run(intake.classify, TICKETS)
        print(row("healthy API", results, latencies, wall))
        healthy = (len(results) / wall, claude.requests, api.max_in_flight)
        intake.close()
        claude.close()

        # 2. API failing with 500s: tickets keep arriving until the circuit opens
        api.reset()
        api.default = server_error()
        claude = make_claude(api.url)
        intake = FallbackClassifier(primary=claude, fallback=offline, deadline=20.0, workers=CONCURRENCY)
        opened = threading.Event()
        failing: list[tuple[Classification, float]] = []
        lock = threading.Lock()

        def feed() -> None:
            while not opened.is_set():
                subject, body = TEXTS[0]
                started = time.perf_counter()
                result = intake.classify(subject, body)
                with lock:
                    failing.append((result, time.perf_counter() - started))

        started = time.perf_counter()
        feeders = [threading.Thread(target=feed) for _ in range(CONCURRENCY)]
        for thread in feeders:
            thread.start()
        while claude.circuit_state != "open" and time.perf_counter() - started < 40:
            time.sleep(0.005)
        time_to_open = time.perf_counter() - started
        requests_to_open, failures_to_open = claude.requests, claude.failures
        opened.set()
        for thread in feeders:
            thread.join()
        # Only the tickets that met the failing API: those rejected by the open circuit are phase 3's story.
        tried = [(r, t) for r, t in failing if r.fallback_reason != "circuit open"]
        wall = time.perf_counter() - started
        print(row("API failing (500), circuit closed", [r for r, _ in tried], [t for _, t in tried], wall))

        # 3. circuit open: intake answers from the fallback without calling the API
        before = len(api.requests)
        results, latencies, wall = run(intake.classify, TICKETS)
        print(row("circuit open", results, latencies, wall))
        calls_while_open = len(api.requests) - before
        intake.close()
        claude.close()

    print()
    print(f"healthy: {healthy[0]:.1f} tickets/s (target >= 15), {healthy[1]} requests, max {healthy[2]} in flight")
    print(
        f"failing: circuit open after {time_to_open:.2f} s ({failures_to_open} failed calls, "
        f"{requests_to_open} requests incl. retries); {calls_while_open} requests while open"
    )


if __name__ == "__main__":
    main()
