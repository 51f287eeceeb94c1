"""Classification step of the pipeline: the Classifier port and the value it returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from core.ticket import Priority


@dataclass(frozen=True, slots=True)
class Classification:
    """A classifier's verdict on one ticket text.

    ``department`` is one of the configured department names; ``confidence`` is in [0, 1];
    ``classifier`` names who decided ("offline", "claude", ...), ``model`` which model or version.
    """

    department: str
    priority: Priority
    confidence: float
    summary: str
    classifier: str
    model: str | None = None
    latency_ms: float | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    fallback_reason: str | None = None


class Classifier(Protocol):
    """Anything that turns a ticket's subject and body into a Classification."""

    name: str

    def classify(self, subject: str, body: str) -> Classification:
        """Classify one ticket text.

        Raises:
            ClassifierUnavailable: the classifier cannot answer now; callers fall back.
        """
        ...
