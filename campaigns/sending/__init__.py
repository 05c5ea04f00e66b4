"""Claim → pick offers → render → deliver → record, for one batch of a campaign's messages.

Exactly once: a message is claimed (planned → sending) in a transaction that also checks suppression
and the frequency cap under a lock on the customer's row; SMTP is spoken only after that commits. A
message whose fate is unknown (connection lost during the SMTP conversation, worker killed) becomes
"uncertain" and is never resent automatically.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import logging
import sys
import threading
import time

from django.core.mail import EmailMultiAlternatives
from django.utils import timezone

from ..models import Message
from ..recommender.stored import ProductRows
from .claim import messages_claim, messages_due, messages_sweep_stuck
from .compose import OfferDraft, messages_build, offers_pick, product_url, with_utm
from .deliver import Courier, deferral_fields, out_of_time_error, retry_fields, send_deadline
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
SWITCH_SECONDS = 0.001  # the GIL's switch interval while a batch is sent (_batch_runtime)
GC_THRESHOLD = (10_000, 50, 100)  # the cyclic collector's, while a batch is sent (_batch_runtime)


def _skip(messages: list[Message], reason: str, error: str = "") -> None:
    Message.objects.filter(pk__any=[m.pk for m in messages], status=Message.Status.SENDING).update(
        status=Message.Status.SKIPPED, skip_reason=reason, error=error[:2000]
    )


def messages_send(*, message_ids: list[int], now: dt.datetime | None = None) -> dict[str, int]:
    """Send one batch: claim, then per chunk pick offers and render; the store stage writes the chunk's
    offers and links and hands it to the courier, which delivers it over the batch's one connection,
    while the next chunk is composed. Returns counts by outcome."""
    counts = {"claimed": 0, "sent": 0, "retry": 0, "failed": 0, "uncertain": 0, "skipped": 0}
    deadline = send_deadline()  # before the claim: the sweep counts from claimed_at
    claimed = messages_claim(message_ids=message_ids, now=now)
    if not claimed:
        return counts
    counts["claimed"] = len(claimed)
    courier = Courier(counts, deadline=deadline)
    try:
        _orders_attach(claimed)
        products = ProductRows()
        with _batch_runtime(), courier, Store(courier) as store:
            for chunk in _chunks(claimed):
                if time.monotonic() > deadline:
                    break  # the courier would defer them: composing them now is wasted work
                store.put(*_compose(chunk, counts, products))
    except BaseException as exc:
        _release([m for m in claimed if m.pk not in courier.handed], exc)
        raise
    late = [m for m in claimed if m.pk not in courier.handed]  # composing stopped at the deadline
    counts["retry"] += _defer(late, out_of_time_error())
    return counts


def _defer(messages: list[Message], error: str) -> int:
    """Claimed messages the courier never got because the batch ran out of time: deferred (not an
    attempt), as the courier defers those it gets after the deadline. Those skipped meanwhile (no offer,
    a render error) are not "sending" any more and stay as they are."""
    now, deferred = timezone.now(), 0
    for since in {m.deferred_since for m in messages}:  # the wait depends on when a run of deferrals began
        group = [m for m in messages if m.deferred_since == since]
        deferred += Message.objects.filter(
            pk__any=[m.pk for m in group], status=Message.Status.SENDING
        ).update(**deferral_fields(group[0], now, error))
    return deferred


def _release(messages: list[Message], exc: BaseException) -> None:
    """Claimed messages the courier never got were certainly not sent: planned again (after a backoff,
    failed after SEND_MAX_ATTEMPTS) instead of left "sending" for the sweep, which would call them
    uncertain and never send them. Those already skipped are not "sending" any more."""
    error = f"not sent: the batch stopped ({type(exc).__name__}: {exc})"[:2000]
    now = timezone.now()
    try:
        for attempts in sorted({m.attempts - m.deferrals for m in messages}):  # real attempts
            ids = [m.pk for m in messages if m.attempts - m.deferrals == attempts]
            Message.objects.filter(pk__any=ids, status=Message.Status.SENDING).update(
                error=error, **retry_fields(attempts, now)
            )
    except Exception:  # noqa: BLE001 - the database may be what failed: then the sweep has them
        log.exception("could not plan again the %s messages a failed batch did not send", len(messages))


@contextlib.contextmanager
def _batch_runtime():
    """The interpreter tuned for a batch, and restored after it: in a worker process's main thread,
    which runs one batch at a time (a prefork Celery worker).

    - The GIL's switch interval: the store and courier threads mostly wait for PostgreSQL and the SMTP
      server while this one composes in Python. Each time one of them gets its answer it waits for the
      GIL, which a busy thread hands over only every sys.getswitchinterval() (5 ms by default): several
      times per chunk, and the composing then waited for the store stage (at 1 ms: less idle time
      per batch and half the wait for the store stage, bench/README.md).
    - The cyclic collector's thresholds: a batch allocates millions of short-lived containers (rows,
      offers, contexts, parts). At the default thresholds 10,000 emails ran about 550 collections, 4
      of them full, 0.8 s of their 9 s of CPU (bench/README.md); with these, 13 and 0.03–0.08 s.
      Reference counting frees nearly all of it; the collector still runs, every GC_THRESHOLD[0]
      allocations."""
    if threading.current_thread() is not threading.main_thread():
        yield  # batches in a thread pool may overlap: the process's settings stay as they are
        return
    interval, thresholds = sys.getswitchinterval(), gc.get_threshold()
    sys.setswitchinterval(SWITCH_SECONDS)
    gc.set_threshold(*GC_THRESHOLD)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)
        gc.set_threshold(*thresholds)


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
