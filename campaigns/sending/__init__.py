"""Claim → pick offers → render → deliver → record, for one batch of a campaign's messages.

Exactly once: a message is claimed (planned → sending) in a transaction that also checks suppression
and the frequency cap under a lock on the customer's row; SMTP is spoken only after that commits. A
message whose fate is unknown (connection lost during the SMTP conversation, worker killed) becomes
"uncertain" and is never resent automatically.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import sys

from django.core.mail import EmailMultiAlternatives

from ..models import Message
from ..recommender.stored import ProductRows
from .claim import messages_claim, messages_due, messages_sweep_stuck
from .compose import OfferDraft, messages_build, offers_pick, product_url, with_utm
from .deliver import Courier
from .store import Store

__all__ = [
    "messages_build",
    "messages_claim",
    "messages_due",
    "messages_send",
    "messages_sweep_stuck",
    "offers_pick",
    "product_url",
    "with_utm",
]

log = logging.getLogger(__name__)

# Messages composed (offers, render, links stored) before their emails are handed to the courier.
FIRST_CHUNK = 100
COMPOSE_CHUNK = 250
LAST_CHUNK = 50
SWITCH_SECONDS = 0.001  # the GIL's switch interval while a batch is sent (_switch_interval)


def _skip(messages: list[Message], reason: str, error: str = "") -> None:
    Message.objects.filter(pk__any=[m.pk for m in messages], status=Message.Status.SENDING).update(
        status=Message.Status.SKIPPED, skip_reason=reason, error=error[:2000]
    )


def messages_send(*, message_ids: list[int], now: dt.datetime | None = None) -> dict[str, int]:
    """Send one batch: claim, then per chunk pick offers and render; the store stage writes the chunk's
    offers and links and hands it to the courier, which delivers it over the batch's one connection,
    while the next chunk is composed. Returns counts by outcome."""
    counts = {"claimed": 0, "sent": 0, "retry": 0, "failed": 0, "uncertain": 0, "skipped": 0}
    claimed = messages_claim(message_ids=message_ids, now=now)
    if not claimed:
        return counts
    counts["claimed"] = len(claimed)
    _orders_attach(claimed)
    products = ProductRows()
    with _switch_interval(SWITCH_SECONDS), Courier(counts) as courier, Store(courier) as store:
        for chunk in _chunks(claimed):
            store.put(*_compose(chunk, counts, products))
    return counts


@contextlib.contextmanager
def _switch_interval(seconds: float):
    """The store and courier threads mostly wait for PostgreSQL and the SMTP server while this one
    composes in Python. Each time one of them gets its answer it waits for the GIL, which a busy thread
    hands over only every sys.getswitchinterval() (5 ms by default): several times per chunk, and the
    composing then waited for the store stage (bench/README.md). A shorter interval for the batch, the
    process's own restored after it (a worker process runs one batch at a time)."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def _chunks(messages: list[Message]) -> list[list[Message]]:
    """A small first chunk so that delivery starts early, and a small last one so that the store and the
    courier finish soon after the composing does (the batch waits for them); between them chunks large
    enough that the recommender's cost per call (about half of it is fixed) is spread over many messages."""
    first, rest = messages[:FIRST_CHUNK], messages[FIRST_CHUNK:]
    last = rest[-LAST_CHUNK:] if len(rest) > max(COMPOSE_CHUNK, LAST_CHUNK) else []
    middle = rest[: len(rest) - len(last)]
    chunks = [first] + [middle[i : i + COMPOSE_CHUNK] for i in range(0, len(middle), COMPOSE_CHUNK)]
    return chunks + [last] if last else chunks


def _orders_attach(messages: list[Message]) -> None:
    with_order = [m.pk for m in messages if m.trigger_order_id]
    orders = (
        {
            m.pk: m.trigger_order
            for m in Message.objects.filter(pk__any=with_order).select_related("trigger_order")
        }
        if with_order
        else {}
    )
    for m in messages:
        m.trigger_order = orders.get(m.pk)


def _compose(
    messages: list[Message], counts: dict[str, int], products: ProductRows
) -> tuple[dict[int, list[OfferDraft]], list[tuple], list[tuple[Message, EmailMultiAlternatives]]]:
    """For a chunk of claimed messages: their offers (not stored yet), the rows of their other links and
    the rendered emails."""
    offers = offers_pick(messages=messages, products=products)
    no_offer = [m for m in messages if not offers.get(m.pk)]
    _skip(no_offer, Message.SkipReason.NO_OFFER)
    counts["skipped"] += len(no_offer)
    ready, links, failed = messages_build(messages=[m for m in messages if offers.get(m.pk)], offers=offers)
    for message, exc in failed:
        log.warning("message %s not rendered: %s", message.pk, exc)
        _skip([message], Message.SkipReason.RENDER_ERROR, str(exc))
    counts["skipped"] += len(failed)
    return offers, links, ready
