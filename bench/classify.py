"""Benchmark of the offline classification step on real helpdesk tickets, next to a TF-IDF + LinearSVC baseline.

Trains through ``core.classify.train.train_from_csv`` (the code path behind ``ticketbot train``) on the Endava
``train.csv``, scores ``test.csv`` on its 8 raw ``Topic_group`` labels one ticket at a time, and prints a table.
Nothing is tuned on test.csv: the method was chosen on a validation split of train.csv (docs/offline-classifier.md).

    python -m bench.classify [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import joblib
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.pipeline import make_pipeline
from sklearn.svm import LinearSVC

from core.classify.base import Classification
from core.classify.offline import OfflineClassifier
from core.classify.train import (
    EvalReport,
    LabeledText,
    evaluate,
    read_labeled_csv,
    save_model,
    ticket_text,
    train_from_csv,
)
from core.errors import TicketbotError
from core.ticket import Priority

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "datasets" / "it-service-ticket-classification"
TEXT_COL, LABEL_COL = "Document", "Topic_group"
TARGET_ACCURACY, TARGET_P50_MS, TARGET_LOAD_S = 0.88, 2.0, 1.0


class SklearnBaseline:
    """The baseline as a Classifier, so ``evaluate`` times it exactly like the product."""

    name = "baseline"

    def __init__(self, pipeline: Any) -> None:
        self._pipeline = pipeline

    def classify(self, subject: str, body: str) -> Classification:
        label = str(self._pipeline.predict([ticket_text(subject, body)])[0])
        return Classification(label, Priority.MEDIUM, 1.0, "", classifier=self.name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.classify", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help=f"folder with train.csv and test.csv (default: {DEFAULT_DATA_DIR})",
    )
    args = parser.parse_args(argv)
    train_csv, test_csv = args.data_dir / "train.csv", args.data_dir / "test.csv"
    for path in (train_csv, test_csv):
        if not path.is_file():
            print(f"error: {path} not found; pass --data-dir", file=sys.stderr)
            return 2
    started = time.perf_counter()
    try:
        test_rows = list(read_labeled_csv(test_csv, TEXT_COL, LABEL_COL))
        ours = _bench_ours(train_csv, test_rows)
        baseline = _bench_baseline(train_csv, test_rows)
    except TicketbotError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(_table(ours, baseline, len(test_rows)))
    print()
    print(f"offline classifier on {test_csv.name}, per label:")
    print(ours["report"].format())
    print()
    for label, ok in (
        (f"accuracy >= {TARGET_ACCURACY}", ours["report"].accuracy >= TARGET_ACCURACY),
        ("accuracy above the baseline", ours["report"].accuracy > baseline["report"].accuracy),
        (f"p50 latency < {TARGET_P50_MS} ms", ours["report"].latency_p50_ms < TARGET_P50_MS),
        (f"model load < {TARGET_LOAD_S} s", ours["load_s"] < TARGET_LOAD_S),
    ):
        print(f"{'PASS' if ok else 'FAIL'}  {label}")
    print(f"total bench time {time.perf_counter() - started:.0f} s")
    return 0


def _bench_ours(train_csv: Path, test_rows: list[LabeledText]) -> dict[str, Any]:
    started = time.perf_counter()
    report = train_from_csv(train_csv, TEXT_COL, LABEL_COL, include_shipped=False)
    train_s = time.perf_counter() - started
    labels = report.model.labels
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "offline.joblib"
        save_model(report.model, path)
        size = path.stat().st_size
        started = time.perf_counter()
        classifier = OfflineClassifier.load(path, labels)  # what the service does at start-up
        load_s = time.perf_counter() - started
    return {
        "report": evaluate(classifier, test_rows),
        "train_s": train_s,
        "load_s": load_s,
        "size": size,
        "name": f"offline ({report.model.version})",
        "warnings": report.warnings,
    }


def _bench_baseline(train_csv: Path, test_rows: list[LabeledText]) -> dict[str, Any]:
    rows = list(read_labeled_csv(train_csv, TEXT_COL, LABEL_COL))
    started = time.perf_counter()
    pipeline = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), LinearSVC(random_state=0))
    pipeline.fit([ticket_text(r.subject, r.body) for r in rows], [r.label for r in rows])
    train_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "baseline.joblib"
        joblib.dump(pipeline, path, compress=3)
        size = path.stat().st_size
        started = time.perf_counter()
        loaded = joblib.load(path)
        load_s = time.perf_counter() - started
    return {
        "report": evaluate(SklearnBaseline(loaded), test_rows),
        "train_s": train_s,
        "load_s": load_s,
        "size": size,
        "name": "baseline: TF-IDF 1-2gram + LinearSVC",
        "warnings": (),
    }


def _table(ours: dict[str, Any], baseline: dict[str, Any], n_test: int) -> str:
    a: EvalReport = ours["report"]
    b: EvalReport = baseline["report"]
    rows = [
        ("accuracy", f"{a.accuracy:.4f}", f"{b.accuracy:.4f}"),
        ("macro-F1", f"{a.macro_f1:.4f}", f"{b.macro_f1:.4f}"),
        ("latency p50 (ms/ticket)", f"{a.latency_p50_ms:.3f}", f"{b.latency_p50_ms:.3f}"),
        ("latency p95 (ms/ticket)", f"{a.latency_p95_ms:.3f}", f"{b.latency_p95_ms:.3f}"),
        ("model load (s)", f"{ours['load_s']:.3f}", f"{baseline['load_s']:.3f}"),
        ("training (s)", f"{ours['train_s']:.1f}", f"{baseline['train_s']:.1f}"),
        ("model file (MB)", f"{ours['size'] / 1e6:.1f}", f"{baseline['size'] / 1e6:.1f}"),
    ]
    left = max(len(r[0]) for r in rows)
    width = max(len(ours["name"]), len(baseline["name"]), 10)
    lines = [
        f"it-service-ticket-classification: {n_test} test tickets, 8 Topic_group labels (raw, unmapped)",
        "",
        f"{'':<{left}}  {ours['name']:>{width}}  {baseline['name']:>{width}}",
    ]
    lines += [f"{name:<{left}}  {x:>{width}}  {y:>{width}}" for name, x, y in rows]
    lines += [f"training warning: {w}" for w in ours["warnings"]]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
