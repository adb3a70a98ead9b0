"""Masking of secrets in values that are about to be logged or shown.

Shared by logging (every log line) and settings (the effective config at start-up), so
both agree on what counts as a secret.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import SecretBytes, SecretStr

MASK = "**********"

# Key segments (after splitting on _ - . and spaces) that mark a value as secret. Whole
# segments, not substrings, so `prompt_tokens` or `max_tokens` stay readable.
_SECRET_SEGMENTS = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "secret",
        "secrets",
        "token",
        "apikey",
        "authorization",
        "cookie",
        "cookies",
        "credential",
        "credentials",
    }
)
# Substrings checked on the key with separators removed: catches `api_key`, `x-api-key`,
# `redisPassword`, `private_key`.
_SECRET_SUBSTRINGS = ("apikey", "password", "passwd", "privatekey", "secretkey", "accesskey")
_SEGMENT_SPLIT = re.compile(r"[_\-.\s]+")
# scheme://user:password@host -> keep the user, mask the password.
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^\s:/@]*:)([^\s@/]+)(@)")
# Query parameters whose name looks secret: ?token=abc&x=1 -> ?token=***&x=1
_URL_QUERY_SECRET = re.compile(
    r"(?i)([?&](?:[a-z0-9_\-]*(?:password|passwd|secret|token|api[_\-]?key|auth)"
    r"[a-z0-9_\-]*)=)([^&#\s]+)"
)

# password=hunter2, "api_key": "abc", secret: xyz  (in exception messages, log events).
_INLINE_SECRET = re.compile(
    r"""(?i)(\b(?:password|passwd|pwd|secret|token|api[_\-]?key|access[_\-]?key)"""
    r"""["']?\s*[=:]\s*["']?)([^\s"',;&]+)"""
    r"|(?i:(\bbearer\s+)[A-Za-z0-9._~+/=\-]+)"
)


def is_secret_key(key: str) -> bool:
    """True when a mapping key / field name looks like it holds a secret."""
    lowered = key.lower()
    if any(seg in _SECRET_SEGMENTS for seg in _SEGMENT_SPLIT.split(lowered)):
        return True
    compact = _SEGMENT_SPLIT.sub("", lowered)
    return any(s in compact for s in _SECRET_SUBSTRINGS)


def mask_url_credentials(text: str) -> str:
    """Mask secrets inside free text: URL passwords (`redis://:pw@host`), secret query
    parameters (`?token=...`) and `password=...` / `api_key: ...` pairs."""
    if not any(marker in text for marker in ("=", ":", "earer")):
        return text  # fast path: most log strings contain none of these
    text = _URL_USERINFO.sub(r"\1***\3", text)
    text = _URL_QUERY_SECRET.sub(r"\1***", text)
    return _INLINE_SECRET.sub(lambda m: f"{m.group(1) or m.group(3)}***", text)


def redact(value: Any, *, _depth: int = 0) -> Any:
    """Return `value` with secrets masked; containers are copied, not mutated.

    A SecretStr holding a URL keeps its non-secret parts (scheme, user, host, db) so an
    operator can still see where a service connects to.
    """
    if isinstance(value, SecretStr):
        return _mask_secret_str(value.get_secret_value())
    if isinstance(value, SecretBytes):
        return MASK
    if isinstance(value, str):
        return mask_url_credentials(value)
    if _depth > 8:  # log payloads are shallow; bail out of pathological nesting
        return value
    if isinstance(value, Mapping):
        return {
            k: _mask_whole(v)
            if isinstance(k, str) and is_secret_key(k)
            else redact(v, _depth=_depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list) or type(value) is tuple:
        return type(value)(redact(v, _depth=_depth + 1) for v in value)
    return value


def _mask_whole(value: Any) -> Any:
    # Keep "unset" visible: None/"" under a secret key tells the operator it is missing.
    if value is None or value == "":
        return value
    return MASK


def _mask_secret_str(secret: str) -> str:
    scheme, sep, rest = secret.partition("://")
    if not sep or any(c.isspace() for c in secret):
        return MASK
    # Split at the LAST "@": a password with an unescaped "/" or "@" must not leak.
    userinfo, at, hostpart = rest.rpartition("@")
    if at:
        user = userinfo.split(":", 1)[0]
        rest = f"{user}:***@{hostpart}" if ":" in userinfo else f"***@{hostpart}"
    return _URL_QUERY_SECRET.sub(r"\1***", f"{scheme}://{rest}")
