"""Reports assembled from the queries: a campaign's, and the overview of the last days; cached."""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.core.cache import cache
from django.db.models import Count, Min, Q
from django.utils import timezone

from customers.models import Customer

from ..models import Campaign, Message
from .queries import (
    HOLDOUT,
    SENT,
    _ratio,
    _report_session,
    _scoped,
    attribution_window,
    conversion_summary,
    event_summary,
    lifetime_value,
    message_summary,
    top_products,
    window_orders,
    window_purchases,
)
from .uplift import uplift_mean, uplift_proportion


def funnel(*, messages: dict, events: dict, conversions: dict) -> dict:
    """The funnel counts from the three summaries; delivered from ESP events when there are any."""
    if events["delivered_events"]:
        delivered, source = events["delivered_not_bounced"], "ESP delivered events"
    else:
        delivered, source = messages["sent"] - events["bounced"], "sent minus bounced"
    steps = (
        "audience",
        "holdout",
        "suppressed",
        "capped",
        "skipped_other",
        "failed",
        "uncertain",
        "pending",
        "sent",
    )
    return {
        **{k: messages[k] for k in steps},
        "delivered": delivered,
        "delivered_source": source,
        **{k: events[k] for k in ("bounced", "opened", "clicked", "accepted", "unsubscribed", "complained")},
        "converted": conversions["converted"],
        "holdout_converted": conversions["holdout_converted"],
    }


def daily_series(*, messages: dict, events: dict, conversions: dict) -> dict:
    """Per day: sends, and messages first opened, clicked, accepted (by people) and converted."""
    series = {
        "sent": messages["sent_by_day"],
        "opens": events["opens_by_day"],
        "clicks": events["clicks_by_day"],
        "accepts": events["accepts_by_day"],
        "conversions": conversions["conversions_by_day"],
    }
    days = _every_day(set().union(*series.values()))
    return {"days": days, **{k: [v.get(d, 0) for d in days] for k, v in series.items()}}


def _every_day(days: set[str]) -> list[str]:
    """Every day (ISO dates) from the first to the last: the chart's axis is a list of labels, so a day
    with nothing left out would draw the days around it as neighbours, and a gap as a trend."""
    if not days:
        return []
    first, last = dt.date.fromisoformat(min(days)), dt.date.fromisoformat(max(days))
    return [(first + dt.timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]


def funnel_rates(counts: dict) -> dict:
    """Each step as a share of the step it depends on; acceptance and conversion per delivered."""
    delivered = counts["delivered"]
    return {
        "sent_of_audience": _ratio(counts["sent"], counts["audience"]),
        "holdout_of_audience": _ratio(counts["holdout"], counts["audience"]),
        "delivered_of_sent": _ratio(delivered, counts["sent"]),
        "open_rate": _ratio(counts["opened"], delivered),
        "click_rate": _ratio(counts["clicked"], delivered),
        "click_to_open": _ratio(counts["clicked"], counts["opened"]),
        "acceptance_rate": _ratio(counts["accepted"], delivered),
        "conversion_rate": _ratio(counts["converted"], delivered),
        "unsubscribe_rate": _ratio(counts["unsubscribed"], delivered),
        "complaint_rate": _ratio(counts["complained"], delivered),
        "bounce_rate": _ratio(counts["bounced"], counts["sent"]),
    }


def scope_report(*, scope: dict) -> dict:
    """Every metric of a scope of messages: the body of a campaign report and of the overview."""
    recipient_customers = Customer.objects.filter(
        pk__in=Message.objects.filter(_scoped(scope), status=SENT).values("customer_id")
    )
    with _report_session() as beside:
        # On PostgreSQL a second connection computes CLV, the top products and the recipients' window
        # purchases meanwhile (about half of a cold report's work; the two halves were measured to
        # balance on a million-message campaign, bench/README.md).
        side = beside(
            lambda: (
                lifetime_value(customers=recipient_customers),
                top_products(scope=scope),
                window_purchases(scope=scope, status=SENT),
            )
        )
        messages = message_summary(scope=scope)
        events = event_summary(scope=scope, messages=messages)
        money = conversion_summary(scope=scope)
        holdout_bought = window_purchases(scope=scope, status=HOLDOUT)
        recipients_orders = window_orders(scope=scope, status=SENT)
        holdout_orders = window_orders(scope=scope, status=HOLDOUT)
        clv, products, recipients_bought = side.result()
    counts = funnel(messages=messages, events=events, conversions=money)
    sent = counts["sent"]
    return {
        "counts": counts,
        "rates": funnel_rates(counts),
        # Offer-attributed: what the campaign's offers earned (recipients only).
        "revenue": money["revenue"],
        "revenue_per_recipient": _ratio(money["revenue"], sent),
        # Any purchase in the window, both groups alike: the basis of the uplift.
        "window": {"recipients": recipients_bought, "holdout": holdout_bought},
        "recipient_conversion_rate": _ratio(recipients_bought["buyers"], recipients_bought["members"]),
        "holdout_conversion_rate": _ratio(holdout_bought["buyers"], holdout_bought["members"]),
        "recipient_window_revenue_per_member": _ratio(
            recipients_bought["revenue"], recipients_bought["members"]
        ),
        "holdout_revenue": holdout_bought["revenue"],
        "revenue_per_holdout": _ratio(holdout_bought["revenue"], holdout_bought["members"]),
        "orders": {"recipients": recipients_orders, "holdout": holdout_orders},
        "clv": clv,
        "uplift_conversion": uplift_proportion(
            x1=recipients_bought["buyers"],
            n1=recipients_bought["members"],
            x2=holdout_bought["buyers"],
            n2=holdout_bought["members"],
        ),
        "uplift_revenue": uplift_mean(
            s1=recipients_bought["revenue"],
            ss1=recipients_bought["revenue_sq"],
            n1=recipients_bought["members"],
            s2=holdout_bought["revenue"],
            ss2=holdout_bought["revenue_sq"],
            n2=holdout_bought["members"],
        ),
        "daily": daily_series(messages=messages, events=events, conversions=money),
        "top_products": products,
        "simulated": messages["simulated"] or events["simulated"] or money["simulated"],
        "attribution_days": attribution_window().days,
    }


def _cached(key: str, compute, refresh: bool) -> dict:
    """A report from the cache unless older than REPORT_CACHE_SECONDS or refresh is asked for.

    A million-message campaign takes seconds to aggregate; the page shows when its figures were
    computed and offers a recompute, so a marketer reloading the page does not rescan the tables.
    """
    report = None if refresh else cache.get(key)
    if report is None:
        report = {**compute(), "computed_at": timezone.now()}
        cache.set(key, report, getattr(settings, "REPORT_CACHE_SECONDS", 600))
    return report


def campaign_report(*, campaign: Campaign, cached: bool = False, refresh: bool = False) -> dict:
    """The campaign's report; with cached, reuse one computed in the last REPORT_CACHE_SECONDS."""
    if not cached:
        return {
            "campaign": campaign,
            **scope_report(scope={"campaign": campaign.pk}),
            "computed_at": timezone.now(),
        }
    compute = lambda: scope_report(scope={"campaign": campaign.pk})  # noqa: E731
    return {"campaign": campaign, **_cached(f"xsell:report:campaign:{campaign.pk}", compute, refresh)}


def overview_report(*, days: int = 90, cached: bool = False, refresh: bool = False) -> dict:
    """The last `days` days across campaigns: messages created since then."""
    if cached:
        return _cached(f"xsell:report:overview:{days}", lambda: overview_report(days=days), refresh)
    since = timezone.now() - dt.timedelta(days=days)
    report = scope_report(scope={"created_at__gte": since})
    by_campaign = list(
        Campaign.objects.filter(messages__created_at__gte=since)
        .annotate(
            sent=Count("messages", filter=Q(messages__status=SENT)),
            first=Min("messages__created_at"),
        )
        .order_by("-first")
        .values("pk", "name", "status", "sent")[:20]
    )
    return {**report, "days": days, "since": since, "campaigns": by_campaign, "computed_at": timezone.now()}


def reports_refresh(*, days: int = 30) -> int:
    """Recompute the cached reports of campaigns with messages in the last `days` days, and the overview.

    Meant for a periodic task, so a marketer opening a large campaign's report reads fresh cached
    figures instead of waiting for the aggregation. Returns the number of campaign reports computed.
    """
    since = timezone.now() - dt.timedelta(days=days)
    campaigns = Campaign.objects.filter(
        pk__in=Message.objects.filter(created_at__gte=since).values("campaign_id")
    )
    count = 0
    for campaign in campaigns:
        campaign_report(campaign=campaign, cached=True, refresh=True)
        count += 1
    overview_report(cached=True, refresh=True)
    return count
