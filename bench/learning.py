"""Benchmark for learning from corrections: offline accuracy before and after people's reroutes are fed back.

    python bench/learning.py [--data-dir DIR] [--corrections 500] [--seed 7]

Before: the shipped model, as a new installation routes. After: the same model retrained (as
`ticketbot train --from-history` does, through core.classify.train.train_from_examples) with N corrections
drawn from the it-service train split, mapped to the five default departments. Both are scored on the
test split, mapped the same way. The test split is never used for training.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `python bench/learning.py` puts bench/, not the repo, on the path

from core.classify.offline import OfflineClassifier  # noqa: E402
from core.classify.train import (  # noqa: E402
    LabeledText,
    evaluate,
    load_mapping,
    read_labeled_csv,
    ticket_text,
    train_from_examples,
)

DEPARTMENTS = ["IT Support", "HR", "Facilities", "Finance", "General"]
DATASET = "it-service-ticket-classification"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("--corrections", type=int, nargs="+", default=[500])
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    folder = args.data_dir / DATASET
    mapping = load_mapping(folder / "department_mapping.suggested.json")

    def rows(name: str) -> list[LabeledText]:
        return list(read_labeled_csv(folder / name, "Document", "Topic_group", mapping=mapping))

    train, test = rows("train.csv"), rows("test.csv")
    print(f"{DATASET}: {len(train)} train rows, {len(test)} test rows, mapped to {len(DEPARTMENTS)} departments")

    before = evaluate(OfflineClassifier.load(None, DEPARTMENTS), test)
    print(f"{'corrections':>12} {'accuracy':>9} {'macro-F1':>9} {'p50 ms':>7} {'train s':>8}")
    print(f"{0:>12} {before.accuracy:>9.4f} {before.macro_f1:>9.4f} {before.latency_p50_ms:>7.2f} {'-':>8}")
    rng = random.Random(args.seed)
    for n in args.corrections:
        sample = rng.sample(train, n)
        started = time.perf_counter()
        model = train_from_examples(
            [(ticket_text(r.subject, r.body), r.label) for r in sample], departments=DEPARTMENTS
        )
        seconds = time.perf_counter() - started
        after = evaluate(OfflineClassifier(model=model, departments=DEPARTMENTS), test)
        print(f"{n:>12} {after.accuracy:>9.4f} {after.macro_f1:>9.4f} {after.latency_p50_ms:>7.2f} {seconds:>8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
