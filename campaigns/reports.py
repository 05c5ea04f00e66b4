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

import contextlib
import datetime as dt
import math

import pandas as pd
from django.conf import settings
from django.core.cache import cache
from django.db import connection, transaction
from django.db.models import Case, Count, F, Max, Min, Q, Sum, Value, When
from django.db.models.functions import TruncDate
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


@contextlib.contextmanager
def _report_session():
    """One transaction for the report's queries; on PostgreSQL with room to hash in memory and no JIT.

    The per-message aggregates of a million-message campaign need ~100 MB of hash tables; with the
    default 4 MB work_mem they spill to disk, and JIT compilation costs more than it saves here.
    """
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL work_mem = '256MB'")
                cursor.execute("SET LOCAL jit = off")
        yield


def _day(value) -> str | None:
    # PostgreSQL returns dates, SQLite text; raw rows are not converted by the ORM.
    return str(value)[:10] if value is not None else None


def _wrap(queryset, select: str, group_by: str = "") -> list[tuple]:
    """Aggregate over a grouped queryset in SQL: SELECT <select> FROM (<queryset>) t [GROUP BY ...]."""
    sql, params = queryset.query.sql_with_params()
    tail = f" GROUP BY {group_by}" if group_by else ""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {select} FROM ({sql}) t{tail}", params)
        return cursor.fetchall()


def message_summary(*, scope: dict) -> dict:
    """Counts by status and skip reason, and sends per day, in one pass over the scope's messages."""
    rows = (
        Message.objects.filter(_scoped(scope))
        .annotate(day=TruncDate("sent_at"))
        .values_list("status", "skip_reason", "day", "is_simulated")
        .annotate(n=Count("pk"))
        .order_by()
    )
    frame = pd.DataFrame(list(rows), columns=["status", "skip_reason", "day", "simulated", "n"])
    by_status = frame.groupby("status")["n"].sum()
    skipped = frame[frame["status"] == Message.Status.SKIPPED].groupby("skip_reason")["n"].sum()
    sent = frame[frame["status"] == SENT]
    count = lambda series, key: int(series.get(key, 0))  # noqa: E731
    return {
        "audience": int(frame["n"].sum()),
        "holdout": count(by_status, HOLDOUT),
        "suppressed": count(skipped, "suppressed"),
        "capped": count(skipped, "capped"),
        "skipped_other": count(by_status, Message.Status.SKIPPED)
        - count(skipped, "suppressed")
        - count(skipped, "capped"),
        "failed": count(by_status, Message.Status.FAILED),
        "uncertain": count(by_status, Message.Status.UNCERTAIN),
        "pending": count(by_status, Message.Status.PLANNED) + count(by_status, Message.Status.SENDING),
        "sent": count(by_status, SENT),
        "sent_by_day": {_day(k): int(v) for k, v in sent.groupby("day")["n"].sum().items()},
        "simulated": bool(frame["simulated"].any()),
    }


def event_summary(*, scope: dict) -> dict:
    """Funnel steps from events: one row per sent message (flags and first days), summed in SQL."""
    kinds = Event.Kind
    opened = Q(kind__in=[kinds.OPEN, kinds.CLICK], is_machine=False)
    clicked = Q(kind=kinds.CLICK, is_machine=False)
    accepted = Q(kind=kinds.ACCEPT)
    per_message = (
        Event.objects.filter(_scoped(scope, "message__"), message__status=SENT)
        .values("message_id")
        .annotate(
            d=_flag(Q(kind=kinds.DELIVERED)),
            b=_flag(Q(kind=kinds.BOUNCE)),
            o=_flag(opened),
            c=_flag(clicked),
            a=_flag(accepted),
            u=_flag(Q(kind=kinds.UNSUBSCRIBE)),
            x=_flag(Q(kind=kinds.COMPLAINT)),
            s=_flag(Q(is_simulated=True)),
            o_day=Min(TruncDate("occurred_at"), filter=opened),
            c_day=Min(TruncDate("occurred_at"), filter=clicked),
            a_day=Min(TruncDate("occurred_at"), filter=accepted),
        )
        .order_by()
    )
    sums = "SUM(d), SUM(CASE WHEN d = 1 AND b = 0 THEN 1 ELSE 0 END), SUM(b), SUM(o), SUM(c), SUM(a), SUM(u), SUM(x), MAX(s)"
    columns = ["o_day", "c_day", "a_day", "n", "d", "db", "b", "o", "c", "a", "u", "x", "s"]
    rows = _wrap(per_message, f"o_day, c_day, a_day, COUNT(*), {sums}", "o_day, c_day, a_day")
    frame = pd.DataFrame(rows, columns=columns)
    totals = {k: int(frame[k].fillna(0).astype(float).sum()) for k in columns[3:]}

    def per_day(column: str) -> dict:
        days = frame.dropna(subset=[column])
        return {_day(k): int(v) for k, v in days.groupby(column)["n"].sum().items()}

    return {
        "delivered_events": totals["d"],
        "delivered_not_bounced": totals["db"],
        "bounced": totals["b"],
        "opened": totals["o"],
        "clicked": totals["c"],
        "accepted": totals["a"],
        "unsubscribed": totals["u"],
        "complained": totals["x"],
        "simulated": bool(totals["s"]),
        "opens_by_day": per_day("o_day"),
        "clicks_by_day": per_day("c_day"),
        "accepts_by_day": per_day("a_day"),
    }


def conversion_summary(*, scope: dict) -> dict:
    """Converted messages, revenue and its sum of squares per group (for Welch), conversions per day."""
    per_message = (
        Conversion.objects.filter(_scoped(scope, "message__"))
        .filter(_recipient_conversion() | _holdout_conversion())
        .values("message_id", "is_holdout")
        .annotate(r=Sum("revenue"), day=Min(TruncDate("order__placed_at")), s=_flag(Q(is_simulated=True)))
        .order_by()
    )
    rows = _wrap(per_message, "is_holdout, day, COUNT(*), SUM(r), SUM(r * r), MAX(s)", "is_holdout, day")
    frame = pd.DataFrame(rows, columns=["holdout", "day", "n", "r", "rr", "s"])
    frame[["r", "rr"]] = frame[["r", "rr"]].astype(float)
    frame["holdout"] = frame["holdout"].astype(bool)
    rec, hold = frame[~frame["holdout"]], frame[frame["holdout"]]
    return {
        "converted": int(rec["n"].sum()),
        "holdout_converted": int(hold["n"].sum()),
        "revenue": float(rec["r"].sum()),
        "revenue_sq": float(rec["rr"].sum()),
        "holdout_revenue": float(hold["r"].sum()),
        "holdout_revenue_sq": float(hold["rr"].sum()),
        "conversions_by_day": {_day(k): int(v) for k, v in rec.groupby("day")["n"].sum().items()},
        "simulated": bool(frame["s"].fillna(0).astype(int).any()),
    }


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
    days = sorted(set().union(*series.values()))
    return {"days": days, **{k: [v.get(d, 0) for d in days] for k, v in series.items()}}


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


def scope_report(*, scope: dict) -> dict:
    """Every metric of a scope of messages: the body of a campaign report and of the overview."""
    with _report_session():
        messages = message_summary(scope=scope)
        events = event_summary(scope=scope)
        money = conversion_summary(scope=scope)
        recipients_orders = window_orders(scope=scope, status=SENT)
        holdout_orders = window_orders(scope=scope, status=HOLDOUT)
        recipient_customers = Customer.objects.filter(
            pk__in=Message.objects.filter(_scoped(scope), status=SENT).values("customer_id")
        )
        clv = lifetime_value(customers=recipient_customers)
        products = top_products(scope=scope)
    counts = funnel(messages=messages, events=events, conversions=money)
    sent, holdout = counts["sent"], counts["holdout"]
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
        "clv": clv,
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
