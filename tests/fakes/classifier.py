"""A scripted classifier for pipeline tests: answers what it is told, or fails, or sleeps."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from core.classify.base import Classification
from core.errors import ClassifierUnavailable
from core.ticket import Priority


@dataclass
class ScriptedClassifier:
    department: str = "IT Support"
    priority: Priority = Priority.MEDIUM
    confidence: float = 0.9
    name: str = "scripted"
    delay: float = 0.0
    fail: bool = False
    calls: list[tuple[str, str]] = field(default_factory=list)

    def classify(self, subject: str, body: str) -> Classification:
        self.calls.append((subject, body))
        if self.delay:
            time.sleep(self.delay)
        if self.fail:
            raise ClassifierUnavailable("scripted failure")
        return Classification(
            department=self.department,
            priority=self.priority,
            confidence=self.confidence,
            summary=(subject or body)[:80],
            classifier=self.name,
            model="scripted-1",
        )
