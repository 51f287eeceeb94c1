"""Route stage of the pipeline: turns a Classification into the department that owns the ticket."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from core.classify.base import Classification


@dataclass(frozen=True, slots=True)
class Route:
    """Where a ticket goes; ``triaged`` when low confidence sent it to the triage department."""

    department: str
    triaged: bool = False
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Router:
    """Picks the department: the classifier's, unless its confidence is below the threshold."""

    departments: Sequence[str]
    triage_department: str
    confidence_threshold: float

    def route(self, classification: Classification) -> Route:
        department = self.canonical(classification.department)
        if department is None:
            return Route(
                self.triage_department, triaged=True, reason=f"unknown department {classification.department!r}"
            )
        if classification.confidence < self.confidence_threshold and department != self.triage_department:
            return Route(
                self.triage_department,
                triaged=True,
                reason=(
                    f"confidence {classification.confidence:.0%} below {self.confidence_threshold:.0%}; "
                    f"best guess was {department}"
                ),
            )
        return Route(department)

    def canonical(self, name: str) -> str | None:
        """The configured spelling of a department name, matched case-insensitively."""
        wanted = name.strip().lower()
        for dept in self.departments:
            if dept.lower() == wanted:
                return dept
        return None
