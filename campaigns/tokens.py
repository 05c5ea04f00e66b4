"""Tokens in recipients' links: a 128-bit random id per row, plus an HMAC naming the link's purpose.

A pixel URL therefore cannot be replayed as an unsubscribe URL, and no customer id or email ever
appears in a link. The HMAC key is SECRET_KEY, salted per purpose.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from django.conf import settings
from django.urls import reverse

PURPOSES = ("open", "click", "offers", "accept", "unsubscribe", "one-click", "preferences")


def _mac(token: str, purpose: str) -> str:
    key = hashlib.sha256(f"xsell.{purpose}.{settings.SECRET_KEY}".encode()).digest()
    digest = hmac.new(key, token.encode(), hashlib.sha256).digest()[:12]
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def purpose_token(token: str, purpose: str) -> str:
    if purpose not in PURPOSES:
        raise ValueError(f"unknown link purpose {purpose!r}")
    return f"{token}.{_mac(token, purpose)}"


def purpose_token_check(value: str, purpose: str) -> str | None:
    """The row token if value was made for this purpose, else None (tampered, truncated, wrong purpose)."""
    token, _, mac = (value or "").rpartition(".")
    if not token or len(token) > 64 or not hmac.compare_digest(mac, _mac(token, purpose)):
        return None
    return token


def public_url(name: str, token: str, purpose: str) -> str:
    """Absolute URL for a recipient's link (SITE_URL + the named route)."""
    return settings.SITE_URL + reverse(name, kwargs={"token": purpose_token(token, purpose)})
