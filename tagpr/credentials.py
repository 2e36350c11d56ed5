"""Secrets (the reward service's bearer token, a teacher API key) come from the environment only:
the variable ``NAME`` holding the value, or ``NAME_FILE`` naming a file that holds it (as Docker
and Kubernetes mount secrets). Configs name the variable, never the value. A request presents the
reward service's token as a Bearer token or as the password of HTTP Basic."""

from __future__ import annotations

import base64
import ipaddress
import os
from pathlib import Path

from tagpr.errors import TagPRError


def read_secret(name: str) -> str | None:
    """The secret ``$name``, else the contents of the file ``$name_FILE``, stripped; ``None`` when
    neither is set. A ``_FILE`` that cannot be read, or is empty, is an error, not a missing token."""
    value = os.environ.get(name, "").strip()
    if value:
        return value
    path = os.environ.get(f"{name}_FILE", "").strip()
    if not path:
        return None
    try:
        value = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise TagPRError(f"${name}_FILE: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not value:
        raise TagPRError(f"${name}_FILE: {path} is empty")
    return value


def is_loopback(host: str) -> bool:
    """Whether a bind address is reachable from this machine only (``localhost``, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: resolvable from elsewhere
        return False


def presented_token(header: str) -> str | None:
    """The token an ``Authorization`` header carries: a Bearer token, or the password of HTTP Basic
    (what aiohttp and requests send for a URL with ``user:token@``); ``None`` for anything else."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            _, sep, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        return password if sep else None
    return None
