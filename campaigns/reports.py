"""What a campaign earned: funnel, rates, revenue, CLV and uplift over the holdout, all from SQL aggregates.

Every figure is one or a few aggregate queries over a *scope* of messages (one campaign, or every message
of the last 90 days); nothing loops over messages in Python. Definitions (also printed on the report):

- audience: every message planned for the scope (sent, failed, skipped, holdout, …).
- recipients (sent): messages with status ``sent``; ``uncertain`` ones are not counted.
- delivered: sent minus messages with a bounce event; when an ESP reports ``delivered`` events, the sent
  messages with a delivered event and no bounce.
- opened / clicked by people: distinct sent messages with a non-machine open or click event (a human
  click implies an open); bots and privacy proxies (``is_machine``) are left out.
- accepted: distinct sent messages with an accept event.
- converted: distinct sent messages with a Conversion on one of their offers (offer not null).
- holdout: messages with status ``holdout``; their conversions are Conversion rows with is_holdout=True
  (any purchase in the attribution window, offer None).
- uplift on conversion rate: p(recipients) − p(holdout), 95% Wald interval (normal approximation for the
  difference of two proportions).
- uplift on revenue per recipient: difference of means, Welch 95% interval (t with Welch–Satterthwaite
  degrees of freedom) from sums and sums of squares of per-message revenue; no conversion counts as 0.
- Either uplift is "not significant yet" when a group has fewer than 30 members or the interval
  includes 0.
- AOV and cross-sell ratio: placed orders of the group's customers within the attribution window after
  the message (sent_at for recipients, created_at for the holdout); cross-sell ratio = distinct products
  per order − 1 (additional products per order).
- CLV, historical: mean total_spent of the recipients' customers. Predictive: average order value ×
  purchases per year × expected lifetime in years, where purchases per year = orders in the last 365 days
  per customer active in them, and lifetime = 1 / annual churn, churn = share of the customers with no
  order in the last 365 days (capped at 10 years); "now" is the latest order in the data.
"""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal

from django.conf import settings
from django.db.models import Case, Count, F, Max, Min, Q, Sum, Value, When
from django.db.models.functions import Coalesce, TruncDate
from django.urls import reverse
from django.utils import timezone
from scipy import stats

from customers.models import Customer, Order

from .models import Campaign, Conversion, Event, Message, Offer

MIN_GROUP = 30
Z_95 = 1.959963984540054
MAX_LIFETIME_YEARS = 10.0
NOT_SIGNIFICANT = "not significant yet"
SENT, HOLDOUT = Message.Status.SENT, Message.Status.HOLDOUT


def attribution_window() -> dt.timedelta:
    return dt.timedelta(days=getattr(settings, "ATTRIBUTION_WINDOW_DAYS", 14))


def _scoped(lookups: dict, prefix: str = "") -> Q:
    """The scope's message lookups, seen from a model related to Message through prefix."""
    return Q(**{f"{prefix}{key}": value for key, value in lookups.items()})


def _flag(condition: Q) -> Max:
    return Max(Case(When(condition, then=Value(1)), default=Value(0)))


def _ratio(num, den) -> float | None:
    return float(num) / float(den) if den else None


def funnel(*, scope: dict) -> dict:
    """Counts of each funnel step for the scope's messages, in three aggregate queries."""
    statuses = Message.objects.filter(_scoped(scope)).aggregate(
        audience=Count("pk"),
        holdout=Count("pk", filter=Q(status=HOLDOUT)),
        suppressed=Count("pk", filter=Q(status=Message.Status.SKIPPED, skip_reason="suppressed")),
        capped=Count("pk", filter=Q(status=Message.Status.SKIPPED, skip_reason="capped")),
        skipped_other=Count(
            "pk",
            filter=Q(status=Message.Status.SKIPPED) & ~Q(skip_reason__in=["suppressed", "capped"]),
        ),
        failed=Count("pk", filter=Q(status=Message.Status.FAILED)),
        uncertain=Count("pk", filter=Q(status=Message.Status.UNCERTAIN)),
        pending=Count("pk", filter=Q(status__in=[Message.Status.PLANNED, Message.Status.SENDING])),
        sent=Count("pk", filter=Q(status=SENT)),
    )
    human = Q(is_machine=False)
    kinds = Event.Kind
    # One row per sent message with events (flags), then summed: a message counts once per step.
    per_message = (
        Event.objects.filter(_scoped(scope, "message__"), message__status=SENT)
        .values("message_id")
        .annotate(
            d=_flag(Q(kind=kinds.DELIVERED)),
            b=_flag(Q(kind=kinds.BOUNCE)),
            o=_flag(Q(kind__in=[kinds.OPEN, kinds.CLICK]) & human),
            c=_flag(Q(kind=kinds.CLICK) & human),
            a=_flag(Q(kind=kinds.ACCEPT)),
            u=_flag(Q(kind=kinds.UNSUBSCRIBE)),
            x=_flag(Q(kind=kinds.COMPLAINT)),
        )
        .order_by()
    )
    events = per_message.aggregate(
        delivered_events=Coalesce(Sum("d"), 0),
        delivered_not_bounced=Coalesce(Sum(Case(When(d=1, b=0, then=Value(1)), default=Value(0))), 0),
        bounced=Coalesce(Sum("b"), 0),
        opened=Coalesce(Sum("o"), 0),
        clicked=Coalesce(Sum("c"), 0),
        accepted=Coalesce(Sum("a"), 0),
        unsubscribed=Coalesce(Sum("u"), 0),
        complained=Coalesce(Sum("x"), 0),
    )
    conv = Conversion.objects.filter(_scoped(scope, "message__")).aggregate(
        converted=Count("message", distinct=True, filter=_recipient_conversion()),
        holdout_converted=Count("message", distinct=True, filter=_holdout_conversion()),
    )
    if events["delivered_events"]:
        delivered, delivered_source = events["delivered_not_bounced"], "ESP delivered events"
    else:
        delivered, delivered_source = statuses["sent"] - events["bounced"], "sent minus bounced"
    return {
        **statuses,
        "delivered": delivered,
        "delivered_source": delivered_source,
        "bounced": events["bounced"],
        "opened": events["opened"],
        "clicked": events["clicked"],
        "accepted": events["accepted"],
        "unsubscribed": events["unsubscribed"],
        "complained": events["complained"],
        **conv,
    }


def _recipient_conversion() -> Q:
    return Q(is_holdout=False, offer__isnull=False, message__status=SENT)


def _holdout_conversion() -> Q:
    return Q(is_holdout=True, message__status=HOLDOUT)


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


def revenue(*, scope: dict) -> dict:
    """Revenue of each group with the sum and sum of squares of per-message revenue (for Welch)."""
    per_message = (
        Conversion.objects.filter(_scoped(scope, "message__"))
        .filter(_recipient_conversion() | _holdout_conversion())
        .values("message_id", "is_holdout")
        .annotate(r=Sum("revenue"))
        .order_by()
    )
    square = F("r") * F("r")
    sums = per_message.aggregate(
        revenue=Coalesce(Sum(Case(When(is_holdout=False, then=F("r")))), Decimal(0)),
        revenue_sq=Coalesce(Sum(Case(When(is_holdout=False, then=square))), Decimal(0)),
        holdout_revenue=Coalesce(Sum(Case(When(is_holdout=True, then=F("r")))), Decimal(0)),
        holdout_revenue_sq=Coalesce(Sum(Case(When(is_holdout=True, then=square))), Decimal(0)),
    )
    return {key: float(value) for key, value in sums.items()}


def window_orders(*, scope: dict, status: str) -> dict:
    """AOV and cross-sell ratio of the group's placed orders within the attribution window."""
    start = F("customer__messages__sent_at") if status == SENT else F("customer__messages__created_at")
    in_window = Order.objects.filter(
        _scoped(scope, "customer__messages__"),
        customer__messages__status=status,
        placed_at__gte=start,
        placed_at__lt=start + attribution_window(),
        status=Order.Status.PLACED,
    ).values("pk")
    per_order = Order.objects.filter(pk__in=in_window).annotate(
        n_products=Count("lines__product", distinct=True)
    )
    agg = per_order.aggregate(orders=Count("pk"), value=Sum("total"), products=Sum("n_products"))
    orders = agg["orders"] or 0
    return {
        "orders": orders,
        "aov": _ratio(agg["value"] or 0, orders),
        "cross_sell_ratio": _ratio(agg["products"] or 0, orders) - 1 if orders else None,
    }


def lifetime_value(*, customers) -> dict:
    """Historical and predictive CLV of a customer queryset, from its lifetime columns and one count."""
    as_of = Customer.objects.aggregate(t=Max("last_order_at"))["t"] or timezone.now()
    year_ago = as_of - dt.timedelta(days=365)
    buyers = customers.filter(orders_count__gt=0)
    agg = buyers.aggregate(
        customers=Count("pk"),
        active=Count("pk", filter=Q(last_order_at__gt=year_ago)),
        spent=Sum("total_spent"),
        orders=Sum("orders_count"),
    )
    recent_orders = Order.objects.filter(
        customer__in=buyers, status=Order.Status.PLACED, placed_at__gt=year_ago, placed_at__lte=as_of
    ).count()
    n = agg["customers"]
    historical = _ratio(agg["spent"] or 0, n)
    aov = _ratio(agg["spent"] or 0, agg["orders"])
    frequency = _ratio(recent_orders, agg["active"])
    churn = 1 - agg["active"] / n if n else None
    lifetime = min(1 / churn, MAX_LIFETIME_YEARS) if churn else (MAX_LIFETIME_YEARS if n else None)
    predictive = aov * frequency * lifetime if None not in (aov, frequency, lifetime) else None
    return {
        "customers": n,
        "historical": historical,
        "aov": aov,
        "purchases_per_year": frequency,
        "annual_churn": churn,
        "expected_lifetime_years": lifetime,
        "predictive": predictive,
        "as_of": as_of,
        "method": (
            "average order value × purchases per year (orders in the last 365 days per active customer) × "
            "expected lifetime (1 / annual churn; churn = share with no order in the last 365 days, "
            f"at most {MAX_LIFETIME_YEARS:g} years)"
        ),
    }


def uplift_proportion(*, x1: int, n1: int, x2: int, n2: int) -> dict:
    """p1 − p2 with a 95% Wald interval (normal approximation for a difference of two proportions)."""
    result = {"method": "difference of proportions, 95% Wald (normal approximation) interval"}
    if not n1 or not n2:
        return {
            **result,
            "diff": None,
            "low": None,
            "high": None,
            "significant": False,
            "verdict": NOT_SIGNIFICANT,
        }
    p1, p2 = x1 / n1, x2 / n2
    se = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    diff = p1 - p2
    return _verdict(result, diff, diff - Z_95 * se, diff + Z_95 * se, min(n1, n2))


def uplift_mean(*, s1: float, ss1: float, n1: int, s2: float, ss2: float, n2: int) -> dict:
    """Difference of means from sums and sums of squares, with a Welch 95% interval."""
    result = {"method": "difference of means, Welch 95% interval (t, Welch–Satterthwaite df)"}
    if n1 < 2 or n2 < 2:
        return {
            **result,
            "diff": None,
            "low": None,
            "high": None,
            "significant": False,
            "verdict": NOT_SIGNIFICANT,
        }
    m1, m2 = s1 / n1, s2 / n2
    v1 = max(ss1 - n1 * m1 * m1, 0.0) / (n1 - 1)
    v2 = max(ss2 - n2 * m2 * m2, 0.0) / (n2 - 1)
    a, b = v1 / n1, v2 / n2
    diff = m1 - m2
    if a + b == 0:
        return _verdict(result, diff, diff, diff, min(n1, n2))
    df = (a + b) ** 2 / (a * a / (n1 - 1) + b * b / (n2 - 1))
    half = float(stats.t.ppf(0.975, df)) * math.sqrt(a + b)
    return {**_verdict(result, diff, diff - half, diff + half, min(n1, n2)), "df": df}


def _verdict(result: dict, diff: float, low: float, high: float, smallest: int) -> dict:
    significant = smallest >= MIN_GROUP and (low > 0 or high < 0)
    verdict = "significant at 95%" if significant else NOT_SIGNIFICANT
    return {**result, "diff": diff, "low": low, "high": high, "significant": significant, "verdict": verdict}


def daily_series(*, scope: dict, since: dt.datetime | None = None) -> dict:
    """Per day: sends, human opens and clicks, acceptances and conversions (events counted)."""
    sent = Message.objects.filter(_scoped(scope), status=SENT)
    events = Event.objects.filter(_scoped(scope, "message__")).filter(
        Q(kind__in=[Event.Kind.OPEN, Event.Kind.CLICK], is_machine=False) | Q(kind=Event.Kind.ACCEPT)
    )
    conversions = Conversion.objects.filter(_scoped(scope, "message__"), _recipient_conversion())
    if since is not None:
        sent = sent.filter(sent_at__gte=since)
        events = events.filter(occurred_at__gte=since)
        conversions = conversions.filter(order__placed_at__gte=since)
    rows: dict[dt.date, dict] = {}

    def put(pairs, key):
        for day, n in pairs:
            rows.setdefault(day, {})[key] = n

    put(sent.annotate(day=TruncDate("sent_at")).values_list("day").annotate(n=Count("pk")).order_by(), "sent")
    for kind in (Event.Kind.OPEN, Event.Kind.CLICK, Event.Kind.ACCEPT):
        by_day = events.filter(kind=kind).annotate(day=TruncDate("occurred_at"))
        put(by_day.values_list("day").annotate(n=Count("pk")).order_by(), f"{kind}s")
    put(
        conversions.annotate(day=TruncDate("order__placed_at"))
        .values_list("day")
        .annotate(n=Count("message", distinct=True))
        .order_by(),
        "conversions",
    )
    days = sorted(rows)
    keys = ("sent", "opens", "clicks", "accepts", "conversions")
    return {"days": [d.isoformat() for d in days], **{k: [rows[d].get(k, 0) for d in days] for k in keys}}


def top_products(*, scope: dict, limit: int = 10) -> list[dict]:
    """Offered products by acceptances and revenue, with the model version that chose them."""
    where = _scoped(scope, "message__")
    fields = ("product_id", "product__sku", "product__name", "model_version_id")
    accepted = {
        tuple(row[:4]): row[4]
        for row in Event.objects.filter(
            _scoped(scope, "message__"), kind=Event.Kind.ACCEPT, offer__isnull=False
        )
        .values_list(*(f"offer__{f}" for f in fields))
        .annotate(n=Count("pk"))
        .order_by()
    }
    earned = {
        tuple(row[:4]): (row[4], row[5])
        for row in Conversion.objects.filter(_scoped(scope, "message__"), _recipient_conversion())
        .values_list(*(f"offer__{f}" for f in fields))
        .annotate(n=Count("message", distinct=True), r=Sum("revenue"))
        .order_by()
    }
    keys = sorted(
        set(accepted) | set(earned),
        key=lambda k: (accepted.get(k, 0), earned.get(k, (0, 0))[1]),
        reverse=True,
    )[:limit]
    offered = {(product, version): n for product, version, n in _offered(where, keys)}
    return [
        {
            "product_id": k[0],
            "sku": k[1],
            "name": k[2] or k[1],
            "model_version": k[3],
            "offered": offered.get((k[0], k[3]), 0),
            "accepted": accepted.get(k, 0),
            "converted": earned.get(k, (0, 0))[0],
            "revenue": float(earned.get(k, (0, 0))[1] or 0),
            "acceptance_rate": _ratio(accepted.get(k, 0), offered.get((k[0], k[3]), 0)),
        }
        for k in keys
    ]


def _offered(where: Q, keys: list) -> list:
    return list(
        Offer.objects.filter(where, message__status=SENT, product_id__in={k[0] for k in keys})
        .values_list("product_id", "model_version_id")
        .annotate(n=Count("pk"))
        .order_by()
    )


def has_simulated(*, scope: dict) -> bool:
    return (
        Message.objects.filter(_scoped(scope), is_simulated=True).exists()
        or Event.objects.filter(_scoped(scope, "message__"), is_simulated=True).exists()
        or Conversion.objects.filter(_scoped(scope, "message__"), is_simulated=True).exists()
    )


def scope_report(*, scope: dict, since: dt.datetime | None = None) -> dict:
    """Every metric of a scope of messages: the body of a campaign report and of the overview."""
    counts = funnel(scope=scope)
    money = revenue(scope=scope)
    sent, holdout = counts["sent"], counts["holdout"]
    recipients_orders = window_orders(scope=scope, status=SENT)
    holdout_orders = window_orders(scope=scope, status=HOLDOUT)
    recipient_customers = Customer.objects.filter(
        pk__in=Message.objects.filter(_scoped(scope), status=SENT).values("customer_id")
    )
    return {
        "counts": counts,
        "rates": funnel_rates(counts),
        "holdout_conversion_rate": _ratio(counts["holdout_converted"], holdout),
        "recipient_conversion_rate": _ratio(counts["converted"], sent),
        "revenue": money["revenue"],
        "holdout_revenue": money["holdout_revenue"],
        "revenue_per_recipient": _ratio(money["revenue"], sent),
        "revenue_per_holdout": _ratio(money["holdout_revenue"], holdout),
        "orders": {"recipients": recipients_orders, "holdout": holdout_orders},
        "clv": lifetime_value(customers=recipient_customers),
        "uplift_conversion": uplift_proportion(
            x1=counts["converted"], n1=sent, x2=counts["holdout_converted"], n2=holdout
        ),
        "uplift_revenue": uplift_mean(
            s1=money["revenue"],
            ss1=money["revenue_sq"],
            n1=sent,
            s2=money["holdout_revenue"],
            ss2=money["holdout_revenue_sq"],
            n2=holdout,
        ),
        "daily": daily_series(scope=scope, since=since),
        "top_products": top_products(scope=scope),
        "simulated": has_simulated(scope=scope),
        "attribution_days": attribution_window().days,
    }


def campaign_report(*, campaign: Campaign) -> dict:
    return {"campaign": campaign, **scope_report(scope={"campaign": campaign.pk})}


def overview_report(*, days: int = 90, now: dt.datetime | None = None) -> dict:
    """The last `days` days across campaigns: messages created since then, and their daily series."""
    since = (now or timezone.now()) - dt.timedelta(days=days)
    report = scope_report(scope={"created_at__gte": since}, since=since)
    by_campaign = list(
        Campaign.objects.filter(messages__created_at__gte=since)
        .annotate(
            sent=Count("messages", filter=Q(messages__status=SENT)),
            first=Min("messages__created_at"),
        )
        .order_by("-first")
        .values("pk", "name", "status", "sent")[:20]
    )
    return {**report, "days": days, "since": since, "campaigns": by_campaign}


def customer_story(*, customer: Customer, limit: int = 100) -> list[dict]:
    """One timeline of the customer's orders, emails, offers, events and conversions, newest first."""
    items: list[dict] = []
    for order in customer.orders.annotate(n=Count("lines")).order_by("-placed_at")[:limit]:
        items.append(
            {
                "at": order.placed_at,
                "kind": "order",
                "title": f"Order {order.external_id}",
                "detail": f"{order.n} line{'s' * (order.n != 1)}, {order.total} {order.currency}"
                + ("" if order.status == Order.Status.PLACED else f" ({order.get_status_display()})"),
                "url": reverse("admin:customers_order_change", args=[order.pk]),
            }
        )
    for message in customer.messages.select_related("campaign").order_by("-created_at")[:limit]:
        status = message.get_status_display()
        if message.skip_reason:
            status += f": {message.get_skip_reason_display()}"
        items.append(
            {
                "at": message.sent_at or message.created_at,
                "kind": "email",
                "title": f"{message.campaign.name}",
                "detail": status,
                "url": reverse("admin:campaigns_message_change", args=[message.pk]),
            }
        )
    offers = Offer.objects.filter(message__customer=customer).select_related("product", "message")
    for offer in offers.order_by("-created_at")[:limit]:
        items.append(
            {
                "at": offer.message.sent_at or offer.created_at,
                "kind": "offer",
                "title": f"Offered {offer.product.name or offer.product.sku}",
                "detail": f"rank {offer.rank}, score {offer.score:.3f}, model {offer.model_version_id or '—'}: "
                f"{offer.reason}",
                "url": "",
            }
        )
    for event in customer.events.select_related("offer__product").order_by("-occurred_at")[:limit]:
        detail = f"offer {event.offer.product.sku}" if event.offer_id else ""
        if event.is_machine:
            detail = f"{detail} machine ({event.machine_reason or 'bot/proxy'})".strip()
        items.append(
            {
                "at": event.occurred_at,
                "kind": "event",
                "title": event.get_kind_display(),
                "detail": detail + (" · simulated" if event.is_simulated else ""),
                "url": "",
            }
        )
    conversions = Conversion.objects.filter(message__customer=customer).select_related(
        "order", "product", "message__campaign"
    )
    for conversion in conversions.order_by("-order__placed_at")[:limit]:
        group = "holdout purchase" if conversion.is_holdout else "converted offer"
        items.append(
            {
                "at": conversion.order.placed_at,
                "kind": "conversion",
                "title": f"{group}: {conversion.product.name or conversion.product.sku}",
                "detail": f"{conversion.revenue} via {conversion.message.campaign.name}",
                "url": "",
            }
        )
    items.sort(key=lambda item: item["at"], reverse=True)
    return items[:limit]
