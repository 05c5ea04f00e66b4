"""Plan who a campaign mails: the segment's audience minus the unmailable, split off a holdout group.

Message rows are created in bulk with ignore_conflicts, so planning the same run twice (a retried task,
two beat ticks) adds nothing: the unique constraints on Message decide, not Python.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
from django.db.models import Count, Exists, OuterRef, Q
from django.utils import timezone

from customers.bulk import bulk_insert, with_defaults
from customers.models import Order, OrderLine

from .models import Campaign, CampaignRun, Message, new_token
from .segments import segment_audience, segment_queryset


def holdout_bucket(*, campaign_id: int, customer_id: int) -> int:
    """0..99, stable per (campaign, customer): the same customer stays in or out of the holdout."""
    digest = hashlib.sha256(f"{campaign_id}:{customer_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100


def campaign_audience(campaign: Campaign, now: dt.datetime):
    """(everyone in the segment, the mailable among them) as querysets."""
    if campaign.segment is not None:
        return segment_queryset(rules=campaign.segment.rules, now=now), segment_audience(
            segment=campaign.segment, now=now
        )
    everyone = segment_queryset(rules={}, now=now)
    return everyone, everyone.mailable(now)


def _status(campaign: Campaign, customer_id: int, mailable: bool) -> tuple[str, str]:
    if not mailable:
        return Message.Status.SKIPPED, Message.SkipReason.SUPPRESSED
    if holdout_bucket(campaign_id=campaign.pk, customer_id=customer_id) < campaign.holdout_percent:
        return Message.Status.HOLDOUT, ""
    return Message.Status.PLANNED, ""


def _insert(campaign: Campaign, rows: list[tuple[int, int | None, dt.datetime | None, bool]], run) -> None:
    """rows: (customer_id, trigger_order_id, send_after, mailable). Existing rows for the occasion win.

    The unmailable get a skipped row too, so the campaign's funnel shows how many were suppressed; the
    holdout is drawn from the mailable only, so recipients and holdout are comparable. One COPY, not
    model instances: a 100,000-recipient campaign spent most of its planning in bulk_create.
    """
    if not rows:
        return
    statuses = [_status(campaign, customer_id, mailable) for customer_id, _, _, mailable in rows]
    frame = pd.DataFrame(
        {
            "customer_id": [r[0] for r in rows],
            "trigger_order_id": pd.array([r[1] for r in rows], dtype="Int64"),
            "send_after": pd.to_datetime([r[2] for r in rows], utc=True),
            "status": [status for status, _ in statuses],
            "skip_reason": [reason for _, reason in statuses],
            "token": [new_token() for _ in rows],
        }
    )
    bulk_insert(Message, with_defaults(Message, frame, campaign=campaign, run=run), ignore_conflicts=True)


def campaign_plan(
    *, campaign: Campaign, run_key: str = "once", now: dt.datetime | None = None
) -> CampaignRun:
    """Plan one run of a one-off or recurring campaign. Idempotent per (campaign, run_key)."""
    now = now or timezone.now()
    run, _ = CampaignRun.objects.get_or_create(campaign=campaign, key=run_key)
    if run.planned_at is not None:
        return run
    everyone, mailable = campaign_audience(campaign, now)
    mailable_ids = set(mailable.values_list("pk", flat=True))
    ids = list(everyone.order_by("pk").values_list("pk", flat=True))
    _insert(campaign, [(pk, None, None, pk in mailable_ids) for pk in ids], run)
    counts = dict(run.messages.values_list("status").annotate(n=Count("pk")).order_by())
    CampaignRun.objects.filter(pk=run.pk, planned_at__isnull=True).update(planned_at=now, counts=counts)
    run.refresh_from_db()
    return run


def trigger_orders(*, campaign: Campaign, now: dt.datetime, order_ids: list[int] | None = None):
    """Placed orders recent enough to trigger this post-purchase campaign, as a queryset."""
    orders = Order.objects.filter(
        status=Order.Status.PLACED,
        placed_at__gte=now - dt.timedelta(days=campaign.trigger_lookback_days),
        # An order dated in the future (a typo'd year, entered by hand) is no trigger: its email would be
        # planned years ahead, or past the last date there is (failing the campaign's planning each tick).
        placed_at__lte=now + dt.timedelta(days=1),
    )
    if order_ids is not None:
        orders = orders.filter(pk__in=order_ids)
    if campaign.trigger_min_value is not None:
        orders = orders.filter(total__gte=campaign.trigger_min_value)
    product_rule = Q()
    if campaign.trigger_skus:
        product_rule |= Q(product__sku__in=campaign.trigger_skus)
    if campaign.trigger_categories:
        product_rule |= Q(product__category__in=campaign.trigger_categories)
    if product_rule:
        orders = orders.filter(Exists(OrderLine.objects.filter(product_rule, order=OuterRef("pk"))))
    return orders


def post_purchase_plan(
    *, campaign: Campaign, now: dt.datetime | None = None, order_ids: list[int] | None = None
) -> int:
    """Plan one message per matching order, due delay_hours after the order. Idempotent per order."""
    now = now or timezone.now()
    everyone, mailable = campaign_audience(campaign, now)
    orders = trigger_orders(campaign=campaign, now=now, order_ids=order_ids).filter(customer__in=everyone)
    candidates = list(orders.values_list("pk", "customer_id", "placed_at"))
    if not candidates:
        return 0
    mailable_ids = set(mailable.filter(pk__in={c for _, c, _ in candidates}).values_list("pk", flat=True))
    delay = dt.timedelta(hours=campaign.delay_hours)
    _insert(campaign, [(c, o, placed + delay, c in mailable_ids) for o, c, placed in candidates], None)
    return len(candidates)


@dataclass(frozen=True)
class CampaignPreview:
    """What starting the campaign now would do, sending nothing (a dry run)."""

    audience: int  # in the segment (post-purchase: buyers of trigger orders in the segment)
    suppressed: int  # of them unsubscribed, bounced, without consent or without an email
    holdout: int
    capped: int  # over the frequency cap or in quiet hours now
    would_send: int
    trigger_orders: int | None  # post-purchase only
    samples: list[tuple[str, list[tuple[float, str, str]]]]  # (email, [(score, product, reason)]) a few
    capped_sampled: int = 0  # recipients whose caps were read to estimate `capped`; 0: all (exact)


# The dry run reads every recipient's caps up to this many; above it, a fixed random sample of this
# many estimates the share capped. 100,000 mailable customers took 4.7 s under cProfile, most of it
# the caps (the 120k bench shop): the admin's page waits for the dry run's task (dry_runs).
PREVIEW_CAP_SAMPLE = 50_000


def campaign_preview(
    *,
    campaign: Campaign,
    now: dt.datetime | None = None,
    sample: int = 5,
    on_step: Callable[[str], None] | None = None,
) -> CampaignPreview:
    """The dry run shown before a campaign starts (admin, dry_runs) and by `run_campaign --dry-run`.
    on_step(name) is told each step as it begins."""
    from customers.models import Customer, Product

    from .caps import CapLedger, policy_default
    from .recommender import recommend_for_customers

    step = on_step or (lambda name: None)
    now = now or timezone.now()
    step("reading the audience")
    everyone, mailable = campaign_audience(campaign, now)
    orders_count = None
    # The mailable with their time zones in one read (the quiet hours check needs them).
    if campaign.kind == Campaign.Kind.POST_PURCHASE:
        orders = trigger_orders(campaign=campaign, now=now).filter(customer__in=everyone)
        zones = dict(orders.filter(customer__in=mailable).values_list("customer_id", "customer__timezone"))
        orders_count = orders.count()
        audience = len(set(orders.values_list("customer_id", flat=True)))
    else:
        zones = dict(mailable.values_list("pk", "timezone"))
        audience = everyone.count()
    ids = list(zones)
    step("drawing the holdout")
    holdout = {
        c for c in ids if holdout_bucket(campaign_id=campaign.pk, customer_id=c) < campaign.holdout_percent
    }
    recipients = sorted(set(ids) - holdout)
    read = recipients
    if len(recipients) > PREVIEW_CAP_SAMPLE:  # seeded: the same campaign shows the same estimate
        read = sorted(random.Random(campaign.pk).sample(recipients, PREVIEW_CAP_SAMPLE))
    step("reading the frequency caps")
    ledger = CapLedger(policy=campaign.frequency_policy or policy_default(), customer_ids=read, now=now)
    capped = sum(not ledger.check(customer_id=c, timezone_name=zones.get(c, "UTC")).allowed for c in read)
    if read is not recipients:
        capped = round(capped * len(recipients) / len(read))
    shown = recipients[:sample]
    step("scoring sample offers")
    recs = recommend_for_customers(
        customer_ids=shown,
        k=campaign.offers_per_email,
        categories=campaign.allowed_categories or None,
        min_score=campaign.min_offer_score,
    )
    names = dict(
        Product.objects.filter(pk__in={r.product_id for v in recs.values() for r in v}).values_list(
            "pk", "name"
        )
    )
    emails = dict(Customer.objects.filter(pk__any=shown).values_list("pk", "email"))
    return CampaignPreview(
        audience=audience,
        suppressed=audience - len(ids),
        holdout=len(holdout),
        capped=capped,
        would_send=len(recipients) - capped,
        trigger_orders=orders_count,
        capped_sampled=len(read) if read is not recipients else 0,
        samples=[
            (emails.get(c, ""), [(r.score, names.get(r.product_id, ""), r.reason) for r in recs.get(c) or []])
            for c in shown
        ],
    )
