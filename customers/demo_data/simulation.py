"""Vectorised simulation of one batch of customers: who they are, what they buy and when.

Times are whole seconds since the start of the history window; products are positions in the catalogue.
Each function draws from the batch's own random generator, in a fixed order, so a batch is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from django.db import connection

from ..models import Order
from .catalogue import (
    ANCHORS_PER_YEAR,
    CANCELLED,
    CATALOGUE,
    CHANNELS,
    COMPLEMENTS,
    CONSENT_SHARE,
    COUNTRIES,
    DAY,
    DOMAIN_SHARE,
    DOMAINS,
    EMAIL_DOMAINS,
    FIRST_ANCHOR_SHARE,
    FIRST_NAMES,
    FOLLOW_UP_EXTRA,
    GROWTH_PER_YEAR,
    KEEP_BUYING,
    LAST_NAMES,
    MONTH_FACTORS,
    PEAK_HOURS,
    REPEAT_EXTRA,
    RETURNED,
    SAME_ORDER,
    SUPPRESSION,
    TRIP_EXTRA_ITEMS,
    TRIPS_PER_YEAR,
    WEEKEND_FACTOR,
)


@dataclass(frozen=True)
class Shop:
    """The catalogue as arrays indexed by product position, and the demand calendar of each domain."""

    sku: np.ndarray
    domain: np.ndarray
    price_cents: np.ndarray
    weight: np.ndarray
    repeat_days: np.ndarray
    anchor: np.ndarray
    rule_start: np.ndarray  # the complement rules of product p are rules[rule_start[p] : +rule_count[p]]
    rule_count: np.ndarray
    rule_target: np.ndarray
    rule_prob: np.ndarray
    rule_lag: np.ndarray
    days: int
    day_cdf: tuple[np.ndarray, ...]  # per domain: cumulative demand over the days of the window
    sale_day: np.ndarray  # electronics sales: Black Friday week and the January sale


def shop_build(start: pd.Timestamp, end: pd.Timestamp) -> Shop:
    rows = [(*row, d) for d, name in enumerate(DOMAINS) for row in CATALOGUE[name]]
    sku = np.array([r[0] for r in rows], dtype=object)
    position = {s: i for i, s in enumerate(sku)}
    rules = sorted(
        (position[a], position[c], p, lag) for a, targets in COMPLEMENTS.items() for c, p, lag in targets
    )
    rule_of = np.array([r[0] for r in rules])
    rule_count = np.bincount(rule_of, minlength=len(sku))
    days = (end - start).days
    dates = start + pd.to_timedelta(np.arange(days), unit="D")
    months, weekend = dates.month.to_numpy() - 1, dates.dayofweek.to_numpy() >= 5
    sale_day = ((dates.month == 11) & (dates.day >= 22)) | ((dates.month == 12) & (dates.day >= 26))
    sale_day = np.asarray(sale_day | ((dates.month == 1) & (dates.day <= 10)))
    cdfs = []
    for d in range(len(DOMAINS)):
        demand = np.array(MONTH_FACTORS[d])[months] * np.where(weekend, WEEKEND_FACTOR[d], 1.0)
        demand *= 1 + GROWTH_PER_YEAR * np.arange(days) / 365
        if DOMAINS[d] == "electronics":
            demand *= np.where(sale_day, 1.8, 1.0)
        cdf = np.concatenate([[0.0], np.cumsum(demand)])
        cdfs.append(cdf / cdf[-1])
    return Shop(
        sku=sku,
        domain=np.array([r[6] for r in rows]),
        price_cents=np.array([round(r[3] * 100) for r in rows], dtype=np.int64),
        weight=np.array([r[4] for r in rows], dtype=float),
        repeat_days=np.array([r[5] for r in rows], dtype=float),
        anchor=np.isin(sku, list(COMPLEMENTS)),
        rule_start=np.concatenate([[0], np.cumsum(rule_count)[:-1]]),
        rule_count=rule_count,
        rule_target=np.array([r[1] for r in rules]),
        rule_prob=np.array([r[2] for r in rules]),
        rule_lag=np.array([r[3] for r in rules], dtype=float),
        days=days,
        day_cdf=tuple(cdfs),
        sale_day=sale_day,
    )


# ------------------------------------------------------------------------------------------- sampling


def _days_sample(rng, shop: Shop, domain, lo, hi) -> np.ndarray:
    """A day in [lo, hi) for each event, following its domain's seasonal demand."""
    r, out = rng.random(len(domain)), np.empty(len(domain), dtype=np.int64)
    for d, cdf in enumerate(shop.day_cdf):
        m = domain == d
        low, high = cdf[lo[m]], cdf[hi[m]]
        day = np.searchsorted(cdf, low + r[m] * (high - low), side="right") - 1
        out[m] = np.clip(day, lo[m], hi[m] - 1)
    return out


def _seconds_of_day(rng, domain) -> np.ndarray:
    mean = np.array([p[0] for p in PEAK_HOURS])[domain]
    spread = np.array([p[1] for p in PEAK_HOURS])[domain]
    hours = np.clip(rng.normal(mean, spread), 0, 23.999)
    return (hours * 3600).astype(np.int64)


def _products_pick(rng, shop: Shop, domain, anchors: bool) -> np.ndarray:
    r, out = rng.random(len(domain)), np.empty(len(domain), dtype=np.int64)
    for d in range(len(DOMAINS)):
        choices = np.flatnonzero((shop.domain == d) & (shop.anchor == anchors))
        cdf = np.cumsum(shop.weight[choices])
        m = domain == d
        out[m] = choices[np.minimum(np.searchsorted(cdf, r[m] * cdf[-1], side="right"), len(choices) - 1)]
    return out


@dataclass
class _Events:
    """Purchases as parallel arrays; events sharing an order key are lines of one order."""

    customer: list
    second: list  # seconds since the start of the window
    product: list
    key: list
    next_key: int = 0

    def add(self, customer, second, product, key=None) -> np.ndarray:
        if key is None:
            key = self.next_key + np.arange(len(customer))
            self.next_key += len(customer)
        self.customer.append(customer)
        self.second.append(second)
        self.product.append(product)
        self.key.append(key)
        return key


def _baskets_fill(rng, shop: Shop, ev: _Events, domain, customer, second, key, *, share: float) -> None:
    """A share of these orders pick up an add-on or consumable or two on the way."""
    chosen = np.flatnonzero(rng.random(len(key)) < share)
    item = np.repeat(chosen, 1 + rng.poisson(0.5, size=len(chosen)))
    product = _products_pick(rng, shop, domain[customer[item]], anchors=False)
    ev.add(customer[item], second[item], product, key[item])


def batch_generate(rng, shop: Shop, *, start, first_no: int, n: int) -> tuple[pd.DataFrame, dict, np.ndarray]:
    """Customers first_no … first_no+n-1 and their purchase events."""
    days, end_s = shop.days, shop.days * DAY
    domain = rng.choice(len(DOMAINS), size=n, p=DOMAIN_SHARE)
    # Half the customers were known before the history begins; the others sign up during it.
    signup = np.where(
        rng.random(n) < 0.5, rng.integers(-365 * DAY, 0, size=n), rng.integers(0, end_s - 3 * DAY, size=n)
    )
    first_day = np.clip(signup // DAY + 1, 0, days - 1)
    activity = rng.gamma(1.5, 1 / 1.5, size=n)
    years = activity * (days - first_day) / 365
    ev = _Events([], [], [], [])

    # Anchors: most customers joined with one (soon after signing up), then buy more at their own pace;
    # at most one of each product per customer, the earliest.
    joined = rng.random(n) < FIRST_ANCHOR_SHARE
    count = joined + rng.poisson(np.array(ANCHORS_PER_YEAR)[domain] * years)
    cust = np.repeat(np.arange(n), count)
    is_first = np.r_[True, cust[1:] != cust[:-1]] & joined[cust]
    hi = np.where(is_first & (signup[cust] >= 0), np.minimum(first_day[cust] + 14, days), days)
    product = _products_pick(rng, shop, domain[cust], anchors=True)
    day = _days_sample(rng, shop, domain[cust], first_day[cust], hi)
    second = day * DAY + _seconds_of_day(rng, domain[cust])
    order = np.lexsort((second, product, cust))
    cust, product, day, second = cust[order], product[order], day[order], second[order]
    first = np.r_[True, (cust[1:] != cust[:-1]) | (product[1:] != product[:-1])]
    cust, product, day, second = cust[first], product[first], day[first], second[first]
    anchor_key = ev.add(cust, second, product)

    # Complements of each anchor: same order, or a later one days to weeks after.
    rules_n = shop.rule_count[product]
    source = np.repeat(np.arange(len(product)), rules_n)
    rule = (
        shop.rule_start[product[source]]
        + np.arange(len(source))
        - np.repeat(np.cumsum(rules_n) - rules_n, rules_n)
    )
    hit = rng.random(len(rule)) < shop.rule_prob[rule]
    source, rule = source[hit], rule[hit]
    c_dom = domain[cust[source]]
    same = rng.random(len(source)) < np.array(SAME_ORDER)[c_dom]
    ev.add(cust[source[same]], second[source[same]], shop.rule_target[rule[same]], anchor_key[source[same]])
    later = ~same
    lag = rng.gamma(1.5, shop.rule_lag[rule[later]] / 1.5)
    f_second = (day[source[later]] + 1 + lag.astype(np.int64)) * DAY + _seconds_of_day(rng, c_dom[later])
    inside = f_second < end_s
    f_cust = cust[source[later]][inside]
    f_key = ev.add(f_cust, f_second[inside], shop.rule_target[rule[later]][inside])
    _baskets_fill(rng, shop, ev, domain, f_cust, f_second[inside], f_key, share=FOLLOW_UP_EXTRA)

    # Trips not prompted by an anchor, one to a few items each.
    trips = rng.poisson(np.array(TRIPS_PER_YEAR)[domain] * years)
    t_cust = np.repeat(np.arange(n), trips)
    t_day = _days_sample(rng, shop, domain[t_cust], first_day[t_cust], np.full(len(t_cust), days))
    t_second = t_day * DAY + _seconds_of_day(rng, domain[t_cust])
    t_key = ev.next_key + np.arange(len(t_cust))
    ev.next_key += len(t_cust)
    size = 1 + rng.poisson(TRIP_EXTRA_ITEMS, size=len(t_cust))
    item = np.repeat(np.arange(len(t_cust)), size)
    ev.add(
        t_cust[item],
        t_second[item],
        _products_pick(rng, shop, domain[t_cust[item]], anchors=False),
        t_key[item],
    )

    # Consumables come back: from each customer's first purchase of one, a chain of repeat orders.
    cust, second, product = (np.concatenate(x) for x in (ev.customer, ev.second, ev.product))
    is_consumable = shop.repeat_days[product] > 0
    cust, second, product = cust[is_consumable], second[is_consumable], product[is_consumable]
    order = np.lexsort((second, product, cust))
    cust, second, product = cust[order], second[order], product[order]
    first = np.r_[True, (cust[1:] != cust[:-1]) | (product[1:] != product[:-1])]
    cust, second, product = cust[first], second[first], product[first]
    while len(cust):
        gap = rng.gamma(4.0, shop.repeat_days[product] / 4.0)
        second = (second // DAY + 1 + gap.astype(np.int64)) * DAY + _seconds_of_day(rng, domain[cust])
        again = (rng.random(len(cust)) < KEEP_BUYING) & (second < end_s)
        cust, second, product = cust[again], second[again], product[again]
        key = ev.add(cust, second, product)
        _baskets_fill(rng, shop, ev, domain, cust, second, key, share=REPEAT_EXTRA)

    events = {name: np.concatenate(getattr(ev, name)) for name in ("customer", "second", "product", "key")}
    people = _customers_frame(rng, shop, start=start, first_no=first_no, n=n, signup=signup)
    return people, events, domain


def _customers_frame(rng, shop: Shop, *, start, first_no: int, n: int, signup) -> pd.DataFrame:
    numbers = pd.Series(np.arange(first_no, first_no + n)).astype(str)
    shares = np.array([c[2] for c in COUNTRIES])
    where = rng.choice(len(COUNTRIES), size=n, p=shares / shares.sum())
    consent = rng.random(n) < CONSENT_SHARE
    consent_s = signup + rng.integers(0, 600, size=n)
    reasons = np.array([*SUPPRESSION, ""], dtype=object)
    pick = np.searchsorted(np.cumsum(list(SUPPRESSION.values())), rng.random(n), side="right")
    reason = np.where(consent, reasons[pick], "")
    suppressed_s = consent_s + (rng.random(n) * (shop.days * DAY - consent_s)).astype(np.int64)
    return pd.DataFrame(
        {
            "external_id": "C" + numbers.str.zfill(8),
            "email": "customer-"
            + numbers
            + "@"
            + np.array(EMAIL_DOMAINS, dtype=object)[rng.integers(0, len(EMAIL_DOMAINS), size=n)],
            "first_name": np.array(FIRST_NAMES, dtype=object)[rng.integers(0, len(FIRST_NAMES), size=n)],
            "last_name": np.array(LAST_NAMES, dtype=object)[rng.integers(0, len(LAST_NAMES), size=n)],
            "country": np.array([c[0] for c in COUNTRIES], dtype=object)[where],
            "timezone": np.array([c[1] for c in COUNTRIES], dtype=object)[where],
            "marketing_consent": consent,
            "consent_at": timestamps(start, consent_s).where(consent),
            "consent_source": np.where(consent, "demo", ""),
            "suppressed_reason": reason,
            "suppressed_at": timestamps(start, suppressed_s).where(reason != ""),
            "created_at": timestamps(start, signup),
            "updated_at": timestamps(start, np.full(n, shop.days * DAY)),
        }
    )


def timestamps(start: pd.Timestamp, seconds) -> pd.Series:
    """UTC times as database text: formatting in numpy is far faster than datetime strftime."""
    moments = np.datetime64(start.tz_convert(None), "s") + np.asarray(seconds).astype("timedelta64[s]")
    text = np.strings.replace(np.datetime_as_string(moments, unit="s"), "T", " ")
    if connection.vendor == "postgresql":
        text = np.strings.add(text, "+00:00")
    # SQLite keeps Django's naive UTC text, which sorts and compares like the times it stands for.
    return pd.Series(text.astype(object))


def orders_build(rng, shop: Shop, events: dict, domain) -> tuple[dict, dict]:
    """Events → orders (numbered by customer, then time) and their lines (priciest first)."""
    key, product = events["key"], events["product"]
    keys, order_of = np.unique(key, return_inverse=True)
    any_event = np.empty(len(keys), dtype=np.int64)
    any_event[order_of] = np.arange(len(key))
    customer, second = events["customer"][any_event], events["second"][any_event]
    sequence = np.lexsort((keys, second, customer))
    position = np.empty_like(sequence)
    position[sequence] = np.arange(len(sequence))
    customer, second, order_of = customer[sequence], second[sequence], position[order_of]
    o_dom = domain[customer]

    is_consumable = shop.repeat_days[product] > 0
    quantity = np.where(is_consumable, 1 + np.minimum(rng.poisson(0.6, size=len(key)), 4), 1)
    quantity += (~is_consumable & ~shop.anchor[product] & (rng.random(len(key)) < 0.08)).astype(np.int64)
    # The same product twice in one order is one line.
    n_products = len(shop.sku)
    lines, line_of = np.unique(order_of * n_products + product, return_inverse=True)
    quantity = np.bincount(line_of, weights=quantity).astype(np.int64)
    l_order, l_product = lines // n_products, lines % n_products
    quantity = np.where(o_dom[l_order] == DOMAINS.index("bank"), 1, quantity)
    priciest = np.lexsort((l_product, -shop.price_cents[l_product], l_order))
    l_order, l_product, quantity = l_order[priciest], l_product[priciest], quantity[priciest]
    starts = np.searchsorted(l_order, l_order, side="left")
    line_no = np.arange(len(l_order)) - starts + 1

    on_sale = (o_dom[l_order] == DOMAINS.index("electronics")) & shop.sale_day[second[l_order] // DAY]
    discounted = rng.random(len(l_order)) < np.where(on_sale, 0.4, 0.06)
    discount = np.where(on_sale, rng.uniform(0.10, 0.25, len(l_order)), rng.uniform(0.05, 0.15, len(l_order)))
    unit_cents = np.rint(shop.price_cents[l_product] * np.where(discounted, 1 - discount, 1.0)).astype(
        np.int64
    )
    total_cents = np.bincount(l_order, weights=quantity * unit_cents, minlength=len(customer))

    channel = np.empty(len(customer), dtype=object)
    status = np.full(len(customer), Order.Status.PLACED.value, dtype=object)
    r = rng.random(len(customer))
    for d, mix in enumerate(CHANNELS):
        m = o_dom == d
        channel[m] = rng.choice(list(mix), size=int(m.sum()), p=list(mix.values()))
        status[m & (r < RETURNED[d])] = Order.Status.RETURNED.value
        status[m & (r >= RETURNED[d]) & (r < RETURNED[d] + CANCELLED[d])] = Order.Status.CANCELLED.value
    orders = {
        "customer": customer,
        "second": second,
        "total_cents": total_cents,
        "channel": channel,
        "status": status,
    }
    return orders, {
        "order": l_order,
        "line_no": line_no,
        "product": l_product,
        "quantity": quantity,
        "unit_cents": unit_cents,
    }


def lifetime_fill(people: pd.DataFrame, orders: dict, *, start) -> pd.DataFrame:
    """The figures customer_stats_refresh() keeps, computed before the customers are written.

    Same definition (placed orders only); refreshing them afterwards would rewrite every customer row,
    which costs more than writing them. A test checks the two agree.
    """
    placed = orders["status"] == Order.Status.PLACED.value
    customer, second = orders["customer"][placed], orders["second"][placed]
    n = len(people)
    count = np.bincount(customer, minlength=n)
    spent = np.bincount(customer, weights=orders["total_cents"][placed], minlength=n)
    # Orders are sorted by customer, then time: a customer's first and last placed orders bound a run.
    buyers, first = np.unique(customer, return_index=True)
    last = np.r_[first[1:], len(customer)] - 1
    first_s, last_s = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    first_s[buyers], last_s[buyers] = second[first], second[last]
    return people.assign(
        orders_count=count,
        total_spent=spent / 100,
        first_order_at=timestamps(start, first_s).where(count > 0),
        last_order_at=timestamps(start, last_s).where(count > 0),
    )
