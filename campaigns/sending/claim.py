"""Claim due messages: planned → sending, with suppression and the frequency cap checked under a
lock on each customer's row, in one transaction."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from django.conf import settings
from django.db import connection as db_connection
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from customers.models import Customer

from ..caps import CapLedger, policy_default
from ..models import Campaign, Message

# What claiming and composing read of a customer (is_mailable, the time zone, the template's fields):
# the other columns, five timestamps among them, cost more to load than the claim's checks.
CUSTOMER_FIELDS = (
    "email",
    "first_name",
    "last_name",
    "country",
    "timezone",
    "marketing_consent",
    "suppressed_reason",
    "paused_until",
    "external_id",
)
# What sending reads of a message (the claim, composing, recording the outcome); a claimed message is
# loaded for every email, and its other columns (five timestamps among them) are never read.
MESSAGE_FIELDS = (
    "campaign_id",
    "customer_id",
    "trigger_order_id",
    "status",
    "token",
    "send_after",
    "created_at",
    "claimed_at",
    "attempts",
    "deferrals",
    "deferred_since",
)


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
                    pk__any=list(message_ids),
                    status=Message.Status.PLANNED,
                    campaign__status=Campaign.Status.SENDING,
                ).filter(Q(send_after__isnull=True) | Q(send_after__lte=now))
            )
            .only(*MESSAGE_FIELDS)
            .order_by("customer_id", "pk")
        )
        if not messages:
            return []
        customer_ids = sorted({m.customer_id for m in messages})
        # Lock the customers in id order (no deadlocks between workers): caps and unsubscribes serialise here.
        customers = {
            c.pk: c
            for c in Customer.objects.select_for_update()
            .filter(pk__any=customer_ids)
            .only(*CUSTOMER_FIELDS)
            .order_by("pk")
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
        Message.objects.filter(pk__any=[m.pk for m in claimed]).update(
            status=Message.Status.SENDING, claimed_at=now, attempts=F("attempts") + 1
        )
        for reason, ids in skipped.items():
            Message.objects.filter(pk__any=ids).update(status=Message.Status.SKIPPED, skip_reason=reason)
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
