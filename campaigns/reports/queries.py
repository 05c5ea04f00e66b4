"""The report's SQL: one aggregate pass per table over a scope of messages (definitions: the package)."""

from __future__ import annotations

import contextlib
import datetime as dt
from concurrent.futures import Future, ThreadPoolExecutor

import pandas as pd
from django.conf import settings
from django.core.cache import cache
from django.db import connection, transaction
from django.db.models import (
    Case,
    Count,
    F,
    Max,
    Min,
    Q,
    Sum,
    Value,
    When,
)
from django.db.models.functions import TruncDate
from django.utils import timezone

from customers.models import Customer, Order

from ..models import Conversion, Event, Message, Offer

MAX_LIFETIME_YEARS = 10.0
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


_SESSION = ("SET LOCAL work_mem = '256MB'", "SET LOCAL jit = off", "SET LOCAL random_page_cost = 1.1")


@contextlib.contextmanager
def _report_session():
    """One transaction for the report's queries; on PostgreSQL with room to hash in memory and no JIT.

    The per-message aggregates of a million-message campaign need ~100 MB of hash tables; with the
    default 4 MB work_mem they spill to disk, and JIT compilation costs more than it saves here. With the
    default random_page_cost (4, for disks) the planner scans a whole campaign's messages to join a few
    thousand conversions or orders to them; the tables are in memory, so index probes are cheap.

    Yields beside(fn): a future of fn() run on a second connection while this one goes on, both in
    REPEATABLE READ on one exported snapshot, so the report still reads one consistent state. That
    needs PostgreSQL and this transaction to be the outermost (another connection cannot see a caller's
    uncommitted rows); otherwise fn runs at once, here.
    """
    parallel = connection.vendor == "postgresql" and not connection.in_atomic_block
    with transaction.atomic():
        snapshot = None
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                if parallel:
                    cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                for statement in _SESSION:
                    cursor.execute(statement)
                if parallel:
                    cursor.execute("SELECT pg_export_snapshot()")
                    snapshot = cursor.fetchone()[0]
        if snapshot is None:
            yield _inline
        else:
            with ThreadPoolExecutor(max_workers=1) as pool:
                yield lambda fn: pool.submit(_on_snapshot, snapshot, fn)


def _inline(fn) -> Future:
    future = Future()
    future.set_result(fn())
    return future


def _on_snapshot(snapshot: str, fn):
    # A thread gets its own connection from Django; close it here, the thread is not reused for requests.
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            cursor.execute("SET TRANSACTION SNAPSHOT %s", [snapshot])
            for statement in _SESSION:
                cursor.execute(statement)
            return fn()
    finally:
        connection.close()


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


def _event_scoped(scope: dict) -> Q:
    """The scope's lookups for events: the campaign from Event's own copy of it, the rest via the message."""
    return Q(**{(key if key == "campaign" else f"message__{key}"): value for key, value in scope.items()})


def message_summary(*, scope: dict) -> dict:
    """Counts by status and skip reason, sends per day, and the recipients' first touches (delivered,
    opened, clicked, accepted by day), in one pass over the scope's messages."""
    rows = (
        Message.objects.filter(_scoped(scope))
        .annotate(
            day=TruncDate("sent_at"),
            d=Case(When(delivered_at__isnull=False, then=Value(1)), default=Value(0)),
            o_day=TruncDate("opened_at"),
            c_day=TruncDate("clicked_at"),
            a_day=TruncDate("accepted_at"),
        )
        .values_list("status", "skip_reason", "day", "is_simulated", "d", "o_day", "c_day", "a_day")
        .annotate(n=Count("pk"))
        .order_by()
    )
    columns = ["status", "skip_reason", "day", "simulated", "d", "o_day", "c_day", "a_day", "n"]
    frame = pd.DataFrame(list(rows), columns=columns)
    by_status = frame.groupby("status")["n"].sum()
    skipped = frame[frame["status"] == Message.Status.SKIPPED].groupby("skip_reason")["n"].sum()
    sent = frame[frame["status"] == SENT]
    count = lambda series, key: int(series.get(key, 0))  # noqa: E731

    def per_day(column: str) -> dict:
        days = sent.dropna(subset=[column])
        return {_day(k): int(v) for k, v in days.groupby(column)["n"].sum().items()}

    def touched(column: str) -> int:
        return int(sent.loc[sent[column].notna(), "n"].sum())

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
        "delivered_events": int(sent.loc[sent["d"] == 1, "n"].sum()),
        "opened": touched("o_day"),
        "clicked": touched("c_day"),
        "accepted": touched("a_day"),
        "opens_by_day": per_day("o_day"),
        "clicks_by_day": per_day("c_day"),
        "accepts_by_day": per_day("a_day"),
    }


def event_summary(*, scope: dict, messages: dict) -> dict:
    """Funnel steps: first touches from the message pass; bounces, unsubscribes, complaints and
    simulated events (few) from the scope's events, one row per sent message, summed in SQL."""
    kinds = Event.Kind
    rare = [kinds.BOUNCE, kinds.UNSUBSCRIBE, kinds.COMPLAINT]
    per_message = (
        Event.objects.filter(
            _event_scoped(scope), Q(kind__in=rare) | Q(is_simulated=True), message__status=SENT
        )
        .values("message_id")
        .annotate(
            b=_flag(Q(kind=kinds.BOUNCE)),
            u=_flag(Q(kind=kinds.UNSUBSCRIBE)),
            x=_flag(Q(kind=kinds.COMPLAINT)),
            s=_flag(Q(is_simulated=True)),
            d=_flag(Q(message__delivered_at__isnull=False)),
        )
        .order_by()
    )
    sums = "SUM(b), SUM(u), SUM(x), MAX(s), SUM(CASE WHEN d = 1 AND b = 1 THEN 1 ELSE 0 END)"
    b, u, x, s, db = (int(v or 0) for v in _wrap(per_message, sums)[0])
    return {
        "delivered_events": messages["delivered_events"],
        "delivered_not_bounced": messages["delivered_events"] - db,
        "bounced": b,
        "unsubscribed": u,
        "complained": x,
        "simulated": bool(s),
        **{
            k: messages[k]
            for k in ("opened", "clicked", "accepted", "opens_by_day", "clicks_by_day", "accepts_by_day")
        },
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


def _recipient_conversion() -> Q:
    return Q(is_holdout=False, offer__isnull=False, message__status=SENT)


def _holdout_conversion() -> Q:
    return Q(is_holdout=True, message__status=HOLDOUT)


def _plus_days(column: str, days: int) -> str:
    """SQL for a timestamp column plus whole days, in this database's dialect."""
    if connection.vendor == "postgresql":
        return f"({column} + interval '{int(days)} days')"
    # SQLite keeps Django datetimes as 'YYYY-MM-DD HH:MM:SS[.ffffff]' text; datetime() gives whole seconds.
    return f"datetime({column}, '+{int(days)} days')"


def window_purchases(*, scope: dict, status: str) -> dict:
    """Members of a group, how many bought anything in their window, and the revenue (sum, sum of squares).

    The same measure for both groups (any placed order by the member within the attribution window after
    the email, or after planning for the holdout), so the uplift compares like with like: offer-attributed
    conversions exist only for recipients, who were the only ones shown offers.
    """
    start = "sent_at" if status == SENT else "created_at"
    messages = Message.objects.filter(_scoped(scope), status=status)
    # A member is a customer, not a message: a post-purchase campaign mails (or holds out) a customer
    # once per order. Each message has its own window; an order inside two of one customer's windows
    # is one purchase (distinct customer and order), and the time between windows is not counted.
    members = messages.values("customer_id", start).order_by()
    bounds = messages.aggregate(lo=Min(start), hi=Max(start), n=Count("customer_id", distinct=True))
    window = attribution_window()
    members_sql, members_params = members.query.sql_with_params()
    lo, hi = bounds["lo"], bounds["hi"]
    lo, hi = (lo, hi + window) if lo is not None else (timezone.now(), timezone.now())
    orders = connection.ops.quote_name(Order._meta.db_table)
    # A join, not a subquery per member: the constant range on placed_at keeps the orders to the
    # campaign's weeks, which PostgreSQL hashes once (a million index probes took seconds). An inner
    # join groups only the buyers; members who bought nothing add 0 to every sum.
    sql = (
        f"SELECT SUM(CASE WHEN r > 0 THEN 1 ELSE 0 END), SUM(r), SUM(r * r) FROM ("
        f" SELECT p.customer_id, SUM(p.total) AS r FROM ("
        f"  SELECT DISTINCT m.customer_id, o.id, o.total FROM ({members_sql}) m"
        f"  JOIN {orders} o ON o.customer_id = m.customer_id AND o.status = %s"
        f"  AND o.placed_at >= %s AND o.placed_at < %s"
        f"  AND o.placed_at >= m.{start} AND o.placed_at < {_plus_days(f'm.{start}', window.days)}"
        f" ) p GROUP BY p.customer_id) t"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, (*members_params, Order.Status.PLACED, lo, hi))
        buyers, revenue, revenue_sq = cursor.fetchone()
    n = bounds["n"]
    return {
        "members": int(n or 0),
        "buyers": int(buyers or 0),
        "revenue": float(revenue or 0),
        "revenue_sq": float(revenue_sq or 0),
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
    """Historical and predictive CLV of a customer queryset, from its lifetime columns and one count.

    Churn is the shop's (annual_churn), not the group's own: a group chosen for a recent purchase (a
    post-purchase campaign's recipients) has nobody silent for a year by construction, which read as
    no churn and the longest lifetime for every such campaign."""
    now = timezone.now()
    # The latest order, never a day after today: an order dated in the future must not move "now".
    as_of = min(Customer.objects.aggregate(t=Max("last_order_at"))["t"] or now, now)
    year_ago = as_of - dt.timedelta(days=365)
    agg = _buyers_summary(customers=customers, year_ago=year_ago, as_of=as_of)
    # A semi-join from the year's orders to the buyers, not a list of every buyer's id.
    n = agg["customers"]
    historical = _ratio(agg["spent"] or 0, n)
    aov = _ratio(agg["spent"] or 0, agg["orders"])
    frequency = _ratio(agg["recent_orders"], agg["active"])
    churn, cohort = annual_churn(as_of=as_of)
    lifetime = None if churn is None else min(1 / churn, MAX_LIFETIME_YEARS) if churn else MAX_LIFETIME_YEARS
    predictive = aov * frequency * lifetime if n and None not in (aov, frequency, lifetime) else None
    return {
        "customers": n,
        "historical": historical,
        "aov": aov,
        "purchases_per_year": frequency,
        "annual_churn": churn,
        "churn_cohort": cohort,
        "expected_lifetime_years": lifetime,
        "predictive": predictive,
        "as_of": as_of,
        "method": (
            "average order value × purchases per year (orders in the last 365 days per customer active in "
            "them) × expected lifetime (1 / annual churn, at most "
            f"{MAX_LIFETIME_YEARS:g} years); annual churn is the shop's: of all customers who ordered in "
            "the year before last, the share with no order in the last 365 days"
            + ("" if churn is not None else " (no customer ordered that long ago: no churn, no prediction)")
        ),
    }


def annual_churn(*, as_of: dt.datetime) -> tuple[float | None, int]:
    """(churn, cohort size): of the customers with a placed order in the year before the last 365 days
    up to as_of, the share with none in those 365 days; None without such customers. From the orders of
    the whole shop, cached by as_of's hour (one scan of two years' orders, the same for every campaign)."""
    # By the hour: as_of is "now" when the latest order is dated after it, a new key on every call.
    key = f"xsell:annual-churn:{as_of.replace(minute=0, second=0, microsecond=0).isoformat()}"
    cached = cache.get(key)
    if cached is not None:
        return tuple(cached)
    year_ago, two_years_ago = as_of - dt.timedelta(days=365), as_of - dt.timedelta(days=730)
    per_customer = (
        Order.objects.filter(status=Order.Status.PLACED, placed_at__gt=two_years_ago, placed_at__lte=as_of)
        .values("customer_id")
        .annotate(first_at=Min("placed_at"), last_at=Max("placed_at"))
        .filter(first_at__lte=year_ago)
        .order_by()
    )
    sql, params = per_customer.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT COUNT(*), SUM(CASE WHEN t.last_at > %s THEN 1 ELSE 0 END) FROM ({sql}) t",
            (year_ago, *params),
        )
        cohort, kept = cursor.fetchone()
    result = ((1 - (kept or 0) / cohort) if cohort else None, cohort)
    cache.set(key, list(result), settings.REPORT_CACHE_SECONDS)
    return result


def _buyers_summary(*, customers, year_ago: dt.datetime, as_of: dt.datetime) -> dict:
    """Buyers (orders_count > 0) among the customers: count, active in the year, spent, orders, and
    their orders placed in the year, in one join of the customers to their year's orders per customer
    (probing the orders of a million customers one by one, or hashing their ids twice, is slower)."""
    buyers = customers.filter(orders_count__gt=0).values("id", "last_order_at", "total_spent", "orders_count")
    recent = (
        Order.objects.filter(status=Order.Status.PLACED, placed_at__gt=year_ago, placed_at__lte=as_of)
        .values("customer_id")
        .annotate(n=Count("pk"))
        .order_by()
    )
    buyers_sql, buyers_params = buyers.query.sql_with_params()
    recent_sql, recent_params = recent.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT COUNT(*), SUM(CASE WHEN b.last_order_at > %s THEN 1 ELSE 0 END), SUM(b.total_spent), "
            f"SUM(b.orders_count), SUM(r.n) FROM ({buyers_sql}) b "
            f"LEFT JOIN ({recent_sql}) r ON r.customer_id = b.id",
            (year_ago, *buyers_params, *recent_params),
        )
        n, active, spent, orders, recent_orders = cursor.fetchone()
    return {
        "customers": n,
        "active": active or 0,
        "spent": spent,
        "orders": orders,
        "recent_orders": recent_orders or 0,
    }


def top_products(*, scope: dict, limit: int = 10) -> list[dict]:
    """Offered products by acceptances and revenue, with the model version that chose them."""
    where = _scoped(scope, "message__")
    fields = ("product_id", "product__sku", "product__name", "model_version_id")
    accepted = {
        tuple(row[:4]): row[4]
        for row in Event.objects.filter(_event_scoped(scope), kind=Event.Kind.ACCEPT, offer__isnull=False)
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
