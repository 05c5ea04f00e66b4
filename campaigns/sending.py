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
import random
import smtplib
from collections.abc import Iterable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from django.conf import settings
from django.core.mail import EmailMultiAlternatives, get_connection
from django.db import connection as db_connection
from django.db import transaction
from django.db.models import F, Q, Value
from django.db.models.functions import Concat
from django.utils import timezone

from customers.models import Customer, Product

from .caps import CapLedger, policy_default
from .models import Campaign, Message, Offer, TrackedLink
from .recommender import recommend_for_customers
from .rendering import RenderError, email_render
from .tokens import public_url

log = logging.getLogger(__name__)
SENT_FLUSH = 50  # accepted messages recorded as sent per UPDATE


# ------------------------------------------------------------------------------------------------ claim


def messages_due(
    *, campaign: Campaign, now: dt.datetime | None = None, limit: int | None = None
) -> list[int]:
    """Ids of the campaign's planned messages whose time has come."""
    now = now or timezone.now()
    due = Message.objects.filter(campaign=campaign, status=Message.Status.PLANNED).filter(
        Q(send_after__isnull=True) | Q(send_after__lte=now)
    )
    ids = due.order_by("pk").values_list("pk", flat=True)
    return list(ids[:limit] if limit else ids)


def _lock(queryset):
    if db_connection.features.has_select_for_update_skip_locked:
        return queryset.select_for_update(skip_locked=True, of=("self",))
    return queryset  # SQLite: the IMMEDIATE transaction already holds the database's write lock


def messages_claim(*, message_ids: Iterable[int], now: dt.datetime | None = None) -> list[Message]:
    """Move due, mailable, uncapped messages to "sending" and return them; record why others are not."""
    now = now or timezone.now()
    with transaction.atomic():
        messages = list(
            _lock(
                Message.objects.filter(
                    pk__in=list(message_ids),
                    status=Message.Status.PLANNED,
                    campaign__status=Campaign.Status.SENDING,
                ).filter(Q(send_after__isnull=True) | Q(send_after__lte=now))
            ).order_by("customer_id", "pk")
        )
        if not messages:
            return []
        customer_ids = sorted({m.customer_id for m in messages})
        # Lock the customers in id order (no deadlocks between workers): caps and unsubscribes serialise here.
        customers = {
            c.pk: c for c in Customer.objects.select_for_update().filter(pk__in=customer_ids).order_by("pk")
        }
        campaign = Campaign.objects.select_related("frequency_policy").get(pk=messages[0].campaign_id)
        ledger = CapLedger(
            policy=campaign.frequency_policy or policy_default(), customer_ids=customer_ids, now=now
        )
        claimed: list[Message] = []
        skipped: dict[str, list[int]] = {}
        for message in messages:
            customer = customers[message.customer_id]
            if not customer.is_mailable:
                skipped.setdefault(Message.SkipReason.SUPPRESSED, []).append(message.pk)
                continue
            decision = ledger.check(customer_id=customer.pk, timezone_name=customer.timezone)
            if decision.allowed:
                ledger.record(customer_id=customer.pk)
                claimed.append(message)
            elif decision.wait_until is not None and decision.wait_until <= _quiet_deadline(message, ledger):
                # Quiet hours: stay planned until they end (rare enough for a statement each).
                Message.objects.filter(pk=message.pk).update(send_after=decision.wait_until)
            else:
                skipped.setdefault(decision.reason, []).append(message.pk)
        # A few set-based statements, not one per message: the row locks above make them safe.
        Message.objects.filter(pk__in=[m.pk for m in claimed]).update(
            status=Message.Status.SENDING, claimed_at=now, attempts=F("attempts") + 1
        )
        for reason, ids in skipped.items():
            Message.objects.filter(pk__in=ids).update(status=Message.Status.SKIPPED, skip_reason=reason)
    for message in claimed:
        message.status, message.claimed_at, message.attempts = (
            Message.Status.SENDING,
            now,
            message.attempts + 1,
        )
    for message in claimed:
        message.customer = customers[message.customer_id]
        message.campaign = campaign
    return claimed


def _quiet_deadline(message: Message, ledger: CapLedger) -> dt.datetime:
    start = message.send_after or message.created_at or ledger.now
    return start + dt.timedelta(hours=ledger.policy.quiet_deadline_hours)


def messages_sweep_stuck(*, now: dt.datetime | None = None) -> int:
    """Messages left in "sending" (a killed worker) become "uncertain": they may have gone out."""
    now = now or timezone.now()
    cutoff = now - dt.timedelta(minutes=settings.SEND_STUCK_MINUTES)
    return Message.objects.filter(status=Message.Status.SENDING, claimed_at__lt=cutoff).update(
        status=Message.Status.UNCERTAIN, error="left in sending (worker stopped?); not resent"
    )


# ----------------------------------------------------------------------------------------------- offers


def _with_utm(url: str, campaign: Campaign) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(
        {
            "utm_source": campaign.utm_source,
            "utm_medium": campaign.utm_medium,
            "utm_campaign": campaign.utm_campaign or campaign.name,
        }
    )
    return urlunsplit(parts._replace(query=urlencode(query)))


def product_url(product: Product) -> str:
    return product.product_url or f"{settings.SITE_URL}/products/{product.sku}"


def offers_create(*, messages: list[Message]) -> dict[int, list[Offer]]:
    """Score the batch's customers in one call and store each message's offers and their links."""
    campaign = messages[0].campaign
    recs = recommend_for_customers(
        customer_ids=[m.customer_id for m in messages],
        k=campaign.offers_per_email,
        anchors={m.customer_id: m.trigger_order_id for m in messages if m.trigger_order_id},
        categories=campaign.allowed_categories or None,
        min_score=campaign.min_offer_score,
    )
    offers = [
        Offer(
            message=m,
            product_id=r.product_id,
            rank=i,
            score=r.score,
            reason=r.reason[:300],
            model_version_id=r.model_version_id,
        )
        for m in messages
        for i, r in enumerate(recs.get(m.customer_id, [])[: campaign.offers_per_email], start=1)
    ]
    Offer.objects.bulk_create(offers, ignore_conflicts=True)
    stored = list(
        Offer.objects.filter(message__in=messages).select_related("product").order_by("message_id", "rank")
    )
    links = [
        TrackedLink(message_id=o.message_id, offer=o, url=_with_utm(product_url(o.product), campaign))
        for o in stored
    ]
    TrackedLink.objects.bulk_create(links)
    by_message: dict[int, list[Offer]] = {}
    for offer, link in zip(stored, links, strict=True):
        offer.click_link = link
        by_message.setdefault(offer.message_id, []).append(offer)
    return by_message


# --------------------------------------------------------------------------------------------- render


def _context(message: Message, offers: list[Offer]) -> dict:
    customer = message.customer
    order = message.trigger_order
    return {
        "customer": {
            "first_name": customer.first_name,
            "last_name": customer.last_name,
            "full_name": customer.full_name,
            "email": customer.email,
            "country": customer.country,
        },
        "offers": [
            {
                "name": o.product.name or o.product.sku,
                "sku": o.product.sku,
                "price": o.product.price,
                "currency": o.product.currency,
                "category": o.product.category,
                "image_url": o.product.image_url,
                "reason": o.reason,
                "score": round(o.score, 3),
                "url": public_url("track-click", o.click_link.token, "click"),
                "accept_url": public_url("accept", o.token, "accept"),
            }
            for o in offers
        ],
        "order": (
            {
                "external_id": order.external_id,
                "placed_at": order.placed_at.date().isoformat(),
                "total": order.total,
            }
            if order
            else None
        ),
        "campaign": {"name": message.campaign.name},
        "offer_page_url": public_url("offers", message.token, "offers"),
        "unsubscribe_url": public_url("unsubscribe", message.token, "unsubscribe"),
        "preferences_url": public_url("preferences", message.token, "preferences"),
    }


def message_id_header(token: str) -> str:
    # Derived from the message's random token, so a whole batch's ids are recorded in one UPDATE.
    return f"<{token}@{_mail_domain()}>"


def _mail_domain() -> str:
    return settings.DEFAULT_FROM_EMAIL.rpartition("@")[2] or "localhost"


def message_build(
    *, message: Message, offers: list[Offer]
) -> tuple[EmailMultiAlternatives, list[TrackedLink]]:
    """The email for one claimed message (three parts, list headers) and the tracked links to store."""
    campaign, template = message.campaign, message.campaign.template
    links: list[TrackedLink] = []

    def track(url: str) -> str:
        if url.startswith(settings.SITE_URL + "/"):
            return url  # already ours (tracked offer links, offer page)
        link = TrackedLink(message=message, url=url)
        links.append(link)
        return public_url("track-click", link.token, "click")

    honeypot = TrackedLink(message=message, url=settings.SITE_URL + "/", is_honeypot=True)
    footer = {
        "unsubscribe_url": public_url("unsubscribe", message.token, "unsubscribe"),
        "preferences_url": public_url("preferences", message.token, "preferences"),
        "pixel_url": public_url("track-open", message.token, "open"),
        "honeypot_url": public_url("track-click", honeypot.token, "click"),
    }
    rendered = email_render(
        subject=template.subject,
        html=template.html,
        text=template.text,
        layout=template.layout,
        context=_context(message, offers),
        track=track,
        footer=footer,
    )
    domain = _mail_domain()
    email = EmailMultiAlternatives(
        subject=rendered.subject,
        body=rendered.text,
        from_email=campaign.from_email or settings.DEFAULT_FROM_EMAIL,
        to=[message.customer.email],
        headers={
            "Message-ID": message_id_header(message.token),
            "List-Unsubscribe": (
                f"<{public_url('one-click', message.token, 'one-click')}>, "
                f"<mailto:unsubscribe@{domain}?subject=unsubscribe%20{message.token}>"
            ),
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            "X-Xsell-Campaign": str(campaign.pk),
            "X-Xsell-Message": message.token,
        },
    )
    email.attach_alternative(rendered.html, "text/html")
    email.metadata = {
        "xsell_message": message.token,
        "xsell_campaign": str(campaign.pk),
    }  # read by anymail ESPs
    return email, [*links, honeypot]


# -------------------------------------------------------------------------------------------- deliver


class _Outcome:
    SENT, RETRY, FAILED, UNCERTAIN = "sent", "retry", "failed", "uncertain"


def _classify(exc: Exception) -> tuple[str, bool, str]:
    """(outcome, hard_bounce, error text) for an exception raised while sending one message."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        code, text = next(iter(exc.recipients.values()))
        return _by_code(code, text)
    if isinstance(exc, smtplib.SMTPSenderRefused | smtplib.SMTPDataError):
        return _by_code(exc.smtp_code, exc.smtp_error)
    status = getattr(exc, "status_code", None)  # an ESP's HTTP API (anymail)
    if status is not None:
        if status == 429 or status >= 500:
            return _Outcome.RETRY, False, f"ESP answered {status}"
        return _Outcome.FAILED, "recipient" in type(exc).__name__.lower(), f"ESP answered {status}: {exc}"
    if type(exc).__name__ == "AnymailRecipientsRefused":
        return _Outcome.FAILED, True, str(exc)
    # Disconnects and timeouts mid-conversation: the server may have accepted the message.
    return _Outcome.UNCERTAIN, False, f"{type(exc).__name__}: {exc}"


def _by_code(code: int, text) -> tuple[str, bool, str]:
    text = text.decode(errors="replace") if isinstance(text, bytes) else str(text)
    if 400 <= code < 500:
        return _Outcome.RETRY, False, f"{code} {text}"
    # 5.1.x (bad mailbox / domain) is a hard bounce; other 5xx (policy, size) fail only this message.
    hard = code in (550, 551, 553) or " 5.1." in f" {text}"
    return _Outcome.FAILED, hard, f"{code} {text}"


def _retry_at(attempts: int, now: dt.datetime) -> dt.datetime:
    base = settings.SEND_RETRY_BASE_SECONDS * (2 ** max(attempts - 1, 0))
    return now + dt.timedelta(seconds=base * random.uniform(0.5, 1.5))  # jitter spreads retries out


def _record_sent(message_ids: list[int]) -> None:
    """Mark a run of accepted messages sent in one statement (their Message-ID derives from the token)."""
    if message_ids:
        Message.objects.filter(pk__in=message_ids, status=Message.Status.SENDING).update(
            status=Message.Status.SENT,
            sent_at=timezone.now(),
            message_id=Concat(Value("<"), F("token"), Value(f"@{_mail_domain()}>")),
        )
        message_ids.clear()


def _record(message: Message, outcome: str, error: str = "", hard_bounce: bool = False) -> None:
    now = timezone.now()
    fields: dict = {"error": error[:2000]}
    if outcome == _Outcome.RETRY and message.attempts < settings.SEND_MAX_ATTEMPTS:
        fields.update(status=Message.Status.PLANNED, send_after=_retry_at(message.attempts, now))
    elif outcome == _Outcome.UNCERTAIN:
        fields.update(status=Message.Status.UNCERTAIN)
    else:
        fields.update(status=Message.Status.FAILED)
    Message.objects.filter(pk=message.pk, status=Message.Status.SENDING).update(**fields)
    if hard_bounce:
        Customer.objects.filter(pk=message.customer_id, suppressed_reason="").update(
            suppressed_reason=Customer.Suppression.BOUNCED, suppressed_at=now
        )


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
    _deliver(ready, counts)
    return counts


def _deliver(ready: list[tuple[Message, EmailMultiAlternatives]], counts: dict[str, int]) -> None:
    if not ready:
        return
    connection = get_connection(fail_silently=False)
    try:
        connection.open()
    except Exception as exc:  # noqa: BLE001 - nothing was sent: every message may be retried
        for message, _ in ready:
            _record(message, _Outcome.RETRY, f"cannot connect: {exc}")
        counts["retry"] += len(ready)
        return
    sent: list[int] = []
    try:
        for message, email in ready:
            email.connection = connection
            try:
                email.send()
            except Exception as exc:  # noqa: BLE001 - one message's failure must not stop the batch
                outcome, hard, error = _classify(exc)
                _record(message, outcome, error, hard_bounce=hard)
                counts[outcome] += 1
                if outcome == _Outcome.UNCERTAIN:
                    _reconnect(connection)
                continue
            sent.append(message.pk)
            counts["sent"] += 1
            if len(sent) >= SENT_FLUSH:
                _record_sent(sent)
    finally:
        # A crash before this leaves the unflushed ones in "sending": swept to "uncertain", never resent.
        _record_sent(sent)
        with contextlib.suppress(Exception):  # closing a dead connection
            connection.close()


def _reconnect(connection) -> None:
    with contextlib.suppress(Exception):
        connection.close()
    try:
        connection.open()
    except Exception:  # noqa: BLE001 - the next send will fail and be classified on its own
        log.warning("SMTP reconnect failed")
