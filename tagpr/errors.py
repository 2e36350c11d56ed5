"""User-facing errors.

Anything a user can cause (a bad config, a malformed LaMP file, a wrong CLI argument) raises a
``TagPRError``; the CLI prints its message and exits non-zero without a stack trace. Bugs stay
ordinary exceptions so they keep their traceback.
"""

from __future__ import annotations


class TagPRError(Exception):
    """A mistake in the user's input, with a message that says where and why."""


class ConfigError(TagPRError):
    """A config file or override that does not validate."""

    def __init__(self, source: str, key: str, reason: str, more: list[tuple[str, str, str]] = ()):
        self.source, self.key, self.reason = source, key, reason
        self.issues = [(source, key, reason), *more]
        super().__init__("\n".join(f"{s}: {k}: {r}" if k else f"{s}: {r}" for s, k, r in self.issues))


class DataError(TagPRError):
    """A LaMP file or record that does not follow the official format."""

    def __init__(self, file: str, reason: str, record_id: str | None = None, field: str | None = None):
        self.file, self.reason, self.record_id, self.field = file, reason, record_id, field
        parts = [file]
        if record_id is not None:
            parts.append(f"record {record_id!r}")
        if field is not None:
            parts.append(f"field {field!r}")
        super().__init__(": ".join(parts) + f": {reason}")
