"""The error tree every package raises into; adapters translate library errors into these at the edge.

TicketbotError
├── ConfigError            bad or missing configuration
├── MalformedMessage       an inbound payload that cannot be turned into a Message
├── ClassifierUnavailable  a classifier cannot answer now (network, timeout, bad output)
├── DeliveryError          an outbound reply or post failed
│   └── PermanentDeliveryError   retrying will not help (bad address, unknown channel)
├── StorageError           the database failed
└── NotFound / InvalidInput      CLI and API input that names nothing or makes no sense
"""

from __future__ import annotations


class TicketbotError(Exception):
    """Root of every error ticketbot raises on purpose."""


class ConfigError(TicketbotError):
    """Raised when the configuration file or environment is invalid; the message names each bad key."""


class MalformedMessage(TicketbotError):
    """Raised when an inbound payload cannot be decoded into a Message; the inbound row is parked."""


class ClassifierUnavailable(TicketbotError):
    """Raised by a classifier that cannot answer (no model, network error, timeout, invalid output)."""


class DeliveryError(TicketbotError):
    """Raised by a sender when a delivery failed and may succeed if retried later."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentDeliveryError(DeliveryError):
    """Raised by a sender when a delivery can never succeed as addressed; the outbox parks it at once."""


class StorageError(TicketbotError):
    """Raised by the store when the database is unreachable or a transaction fails."""


class NotFound(TicketbotError):
    """Raised when an id (ticket, inbound message) names nothing."""


class InvalidInput(TicketbotError):
    """Raised when user input (status, department, text) is not acceptable; the message says why."""
