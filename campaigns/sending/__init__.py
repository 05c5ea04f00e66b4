"""Claim → pick offers → render → deliver → record, for one batch of a campaign's messages.

Exactly once: a message is claimed (planned → sending) in a transaction that also checks suppression
and the frequency cap under a lock on the customer's row; SMTP is spoken only after that commits. A
message whose fate is unknown (connection lost during the SMTP conversation, worker killed) becomes
"uncertain" and is never resent automatically.
"""

from __future__ import annotations

import datetime as dt
import logging

from django.core.mail import EmailMultiAlternatives

from ..models import Message, TrackedLink
from ..rendering import RenderError
from .claim import messages_claim, messages_due, messages_sweep_stuck
from .compose import message_build, offers_create, product_url, with_utm
from .deliver import deliver

__all__ = [
    "message_build",
    "messages_claim",
    "messages_due",
    "messages_send",
    "messages_sweep_stuck",
    "offers_create",
    "product_url",
    "with_utm",
]

log = logging.getLogger(__name__)


def _skip(messages: list[Message], reason: str, error: str = "") -> None:
    Message.objects.filter(pk__in=[m.pk for m in messages], status=Message.Status.SENDING).update(
        status=Message.Status.SKIPPED, skip_reason=reason, error=error[:2000]
    )


def messages_send(*, message_ids: list[int], now: dt.datetime | None = None) -> dict[str, int]:
    """Send one batch: claim, offers, render, deliver over one connection. Returns counts by outcome."""
    counts = {"claimed": 0, "sent": 0, "retry": 0, "failed": 0, "uncertain": 0, "skipped": 0}
    claimed = messages_claim(message_ids=message_ids, now=now)
    if not claimed:
        return counts
    counts["claimed"] = len(claimed)
    orders = {
        m.pk: m.trigger_order
        for m in Message.objects.filter(pk__in=[m.pk for m in claimed if m.trigger_order_id]).select_related(
            "trigger_order"
        )
    }
    for m in claimed:
        m.trigger_order = orders.get(m.pk)
    offers = offers_create(messages=claimed)
    no_offer = [m for m in claimed if not offers.get(m.pk)]
    _skip(no_offer, Message.SkipReason.NO_OFFER)
    counts["skipped"] += len(no_offer)

    ready: list[tuple[Message, EmailMultiAlternatives]] = []
    links: list[TrackedLink] = []
    for message in claimed:
        if not offers.get(message.pk):
            continue
        try:
            email, message_links = message_build(message=message, offers=offers[message.pk])
        except RenderError as exc:
            log.warning("message %s not rendered: %s", message.pk, exc)
            _skip([message], Message.SkipReason.RENDER_ERROR, str(exc))
            counts["skipped"] += 1
            continue
        links += message_links
        ready.append((message, email))
    TrackedLink.objects.bulk_create(links)  # stored before any email with them goes out
    deliver(ready, counts)
    return counts
