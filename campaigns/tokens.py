"""Tokens in recipients' links: a 128-bit random id per row, plus an HMAC naming the link's purpose.

A pixel URL therefore cannot be replayed as an unsubscribe URL, and no customer id or email ever
appears in a link. The HMAC key is SECRET_KEY, salted per purpose.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac

from django.conf import settings
from django.urls import reverse

PURPOSES = ("open", "click", "offers", "accept", "unsubscribe", "one-click", "preferences")


@functools.lru_cache(maxsize=4)
def _keyed(secret_key: str) -> dict[str, hmac.HMAC]:
    # An email carries about 14 tokens: key each purpose once and copy the keyed state per token
    # instead of hashing SECRET_KEY and the HMAC pads every time.
    return {
        purpose: hmac.new(
            hashlib.sha256(f"xsell.{purpose}.{secret_key}".encode()).digest(), digestmod=hashlib.sha256
        )
        for purpose in PURPOSES
    }


def _mac(token: str, purpose: str, keys: dict[str, hmac.HMAC] | None = None) -> str:
    mac = (keys if keys is not None else _keyed(settings.SECRET_KEY))[purpose].copy()
    mac.update(token.encode())
    return base64.urlsafe_b64encode(mac.digest()[:12]).decode()  # 12 bytes: 16 characters, no padding


def purpose_token(token: str, purpose: str, keys: dict[str, hmac.HMAC] | None = None) -> str:
    if purpose not in PURPOSES:
        raise ValueError(f"unknown link purpose {purpose!r}")
    return f"{token}.{_mac(token, purpose, keys)}"


def purpose_token_check(value: str, purpose: str) -> str | None:
    """The row token if value was made for this purpose, else None (tampered, truncated, wrong purpose)."""
    token, _, mac = (value or "").rpartition(".")
    if (
        not token
        or len(token) > 64
        or purpose not in PURPOSES
        or not hmac.compare_digest(mac, _mac(token, purpose))
    ):
        return None
    return token


@functools.lru_cache(maxsize=32)
def _url_pattern(name: str, site_url: str) -> str:
    # reverse() once per route, not once per link: a campaign builds about 14 links per email.
    marker = "TOKEN0MARKER"
    return site_url + reverse(name, kwargs={"token": marker}).replace(marker, "{}")


class PublicUrls:
    """public_url() for the many links of a chunk of emails (about 13 an email): the settings are read
    once, not twice a link (each read of django.conf.settings goes through LazySettings' Python-level
    __getattribute__, about a microsecond)."""

    def __init__(self):
        self.site_url = settings.SITE_URL
        self.keys = _keyed(settings.SECRET_KEY)

    def __call__(self, name: str, token: str, purpose: str) -> str:
        return _url_pattern(name, self.site_url).format(purpose_token(token, purpose, self.keys))


def public_url(name: str, token: str, purpose: str) -> str:
    """Absolute URL for a recipient's link (SITE_URL + the named route)."""
    return PublicUrls()(name, token, purpose)
