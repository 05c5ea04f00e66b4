"""Attribution: which later purchases a message earned, and the holdout's purchases as the baseline.

Definitions (exact):

- Only orders with status "placed" count; revenue is sum(quantity * unit_price) of the order's lines
  of that product. One Conversion per (message, order, product) (a database constraint).
- Recipients: an order line of an *offered* product (an Offer of a sent message) by that message's
  customer, placed after the message's sent_at and no later than the end of its window: the later of
  sent_at + ATTRIBUTION_DELIVERY_DAYS (30) and the message's last human click + ATTRIBUTION_CLICK_DAYS
  (7). Machine clicks (scanners, honeypot) never extend a window. Conversion(offer=the offer,
  is_holdout=False).
- Holdout: an order line of *any* product by a holdout message's customer, placed after the message's
  created_at and within ATTRIBUTION_DELIVERY_DAYS of it (holdout messages have no offers and no clicks).
  Conversion(offer=None, is_holdout=True).
- When several messages of one kind qualify for the same (order, product), the most recent one
  (last touch) gets it, so revenue is never counted twice within recipients or within holdouts.
  A pair already attributed is never re-attributed.
- Each new recipient conversion also records an Event(kind="conversion") at the order's time.

Note for uplift: recipients' conversions are offered products, holdouts' are any product; compare
like with like (e.g. recipients' any-product purchases from the orders) when estimating uplift.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import pandas as pd
from django.conf import settings
from django.db import transaction
from django.db.models import Exists, Max, OuterRef
from django.utils import timezone

from customers.models import Order, OrderLine

from .models import Conversion, Event, Message, Offer

CHUNK = 2000


def _days(name: str, default: int) -> dt.timedelta:
    return dt.timedelta(days=getattr(settings, name, default))


def _frame(queryset, columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame.from_records(list(queryset.values_list(*columns)), columns=columns)


def _purchases(order_ids: list[int]) -> pd.DataFrame:
    """(order, customer, placed_at, product, revenue) for the placed orders among order_ids."""
    frames = [
        _frame(
            OrderLine.objects.filter(
                # Only customers who were mailed or held out can convert: most imported orders are not
                # read at all (a shop's history import would otherwise be read back line by line).
                Exists(
                    Message.objects.filter(
                        customer_id=OuterRef("order__customer_id"),
                        status__in=[Message.Status.SENT, Message.Status.HOLDOUT],
                    )
                ),
                order_id__in=order_ids[i : i + CHUNK],
                order__status=Order.Status.PLACED,
            ),
            ["order_id", "order__customer_id", "order__placed_at", "product_id", "quantity", "unit_price"],
        )
        for i in range(0, len(order_ids), CHUNK)
    ]
    lines = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if lines.empty:
        return pd.DataFrame(columns=["order_id", "customer_id", "placed_at", "product_id", "revenue"])
    lines["revenue"] = lines["quantity"] * lines["unit_price"]  # Decimal * int stays exact
    return (
        lines.rename(columns={"order__customer_id": "customer_id", "order__placed_at": "placed_at"})
        .groupby(["order_id", "customer_id", "placed_at", "product_id"], as_index=False, sort=False)[
            "revenue"
        ]
        .sum()
    )


def _messages(customer_ids: list[int]) -> pd.DataFrame:
    columns = ["id", "customer_id", "campaign_id", "status", "sent_at", "created_at", "is_simulated"]
    frames = [
        _frame(
            Message.objects.filter(
                customer_id__in=customer_ids[i : i + CHUNK],
                status__in=[Message.Status.SENT, Message.Status.HOLDOUT],
            ),
            columns,
        )
        for i in range(0, len(customer_ids), CHUNK)
    ]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def _recipient_candidates(purchases: pd.DataFrame, sent: pd.DataFrame) -> pd.DataFrame:
    ids = sent["id"].tolist()
    offers = pd.concat(
        [
            _frame(
                Offer.objects.filter(message_id__in=ids[i : i + CHUNK]), ["id", "message_id", "product_id"]
            )
            for i in range(0, len(ids), CHUNK)
        ],
        ignore_index=True,
    ).rename(columns={"id": "offer_id"})
    clicks = pd.concat(
        [
            _frame(
                # An acceptance is a click too (the offer page the email linked to), as in the funnel.
                Event.objects.filter(
                    message_id__in=ids[i : i + CHUNK],
                    kind__in=(Event.Kind.CLICK, Event.Kind.ACCEPT),
                    is_machine=False,
                )
                .values("message_id")
                .annotate(last_click=Max("occurred_at")),
                ["message_id", "last_click"],
            )
            for i in range(0, len(ids), CHUNK)
        ],
        ignore_index=True,
    )
    messages = sent.rename(columns={"id": "message_id"}).merge(clicks, on="message_id", how="left")
    window_end = messages["sent_at"] + _days("ATTRIBUTION_DELIVERY_DAYS", 30)
    click_end = pd.to_datetime(messages["last_click"], utc=True) + _days("ATTRIBUTION_CLICK_DAYS", 7)
    messages["window_end"] = window_end.where(~(click_end > window_end), click_end)
    messages["anchor"] = messages["sent_at"]
    offered = offers.merge(messages, on="message_id").merge(purchases, on=["customer_id", "product_id"])
    return offered.loc[
        (offered["placed_at"] > offered["anchor"]) & (offered["placed_at"] <= offered["window_end"])
    ]


def _holdout_candidates(purchases: pd.DataFrame, holdout: pd.DataFrame) -> pd.DataFrame:
    messages = holdout.rename(columns={"id": "message_id"})
    messages["anchor"] = messages["created_at"]
    messages["window_end"] = messages["anchor"] + _days("ATTRIBUTION_DELIVERY_DAYS", 30)
    merged = messages.merge(purchases, on="customer_id")
    merged["offer_id"] = None
    return merged.loc[
        (merged["placed_at"] > merged["anchor"]) & (merged["placed_at"] <= merged["window_end"])
    ]


def _last_touch(candidates: pd.DataFrame, is_holdout: bool, order_ids: list[int]) -> pd.DataFrame:
    if candidates.empty:
        return candidates
    best = candidates.sort_values("anchor", ascending=False).drop_duplicates(["order_id", "product_id"])
    done = pd.concat(
        [
            _frame(
                Conversion.objects.filter(order_id__in=order_ids[i : i + CHUNK], is_holdout=is_holdout),
                ["order_id", "product_id"],
            )
            for i in range(0, len(order_ids), CHUNK)
        ],
        ignore_index=True,
    )
    if done.empty:
        return best
    seen = best.merge(done.assign(_done=True), on=["order_id", "product_id"], how="left")["_done"]
    return best.loc[~seen.fillna(False).to_numpy(dtype=bool)]


def conversions_attribute(*, order_ids: Iterable[int]) -> int:
    """Attribute these orders' lines to messages (see the module docstring). Returns conversions created."""
    order_ids = sorted(set(order_ids))
    purchases = _purchases(order_ids)
    if purchases.empty:
        return 0
    messages = _messages(purchases["customer_id"].unique().tolist())
    if messages.empty:
        return 0
    sent = messages.loc[messages["status"] == Message.Status.SENT]
    holdout = messages.loc[messages["status"] == Message.Status.HOLDOUT]
    found = [
        _last_touch(_recipient_candidates(purchases, sent), False, order_ids) if not sent.empty else None,
        _last_touch(_holdout_candidates(purchases, holdout), True, order_ids) if not holdout.empty else None,
    ]
    created = 0
    with transaction.atomic():
        for frame, is_holdout in zip(found, (False, True), strict=True):
            if frame is None or frame.empty:
                continue
            records = frame.to_dict("records")
            Conversion.objects.bulk_create(
                [
                    Conversion(
                        message_id=r["message_id"],
                        offer_id=r["offer_id"],
                        order_id=r["order_id"],
                        product_id=r["product_id"],
                        revenue=r["revenue"],
                        is_holdout=is_holdout,
                        is_simulated=bool(r["is_simulated"]),
                    )
                    for r in records
                ],
                ignore_conflicts=True,  # a concurrent run attributed it first
                batch_size=1000,
            )
            if not is_holdout:
                Event.objects.bulk_create(
                    [
                        Event(
                            kind=Event.Kind.CONVERSION,
                            message_id=r["message_id"],
                            campaign_id=r["campaign_id"],
                            offer_id=r["offer_id"],
                            customer_id=r["customer_id"],
                            occurred_at=r["placed_at"],
                            is_simulated=bool(r["is_simulated"]),
                            meta={"order_id": r["order_id"], "revenue": str(r["revenue"])},
                        )
                        for r in records
                    ],
                    batch_size=1000,
                )
            created += len(records)
    return created


def conversions_attribute_recent(*, now: dt.datetime | None = None) -> int:
    """The periodic catch-up: orders placed within the longest window that could still be open."""
    now = now or timezone.now()
    since = now - _days("ATTRIBUTION_DELIVERY_DAYS", 30) - _days("ATTRIBUTION_CLICK_DAYS", 7)
    order_ids = list(
        Order.objects.filter(placed_at__gte=since, status=Order.Status.PLACED).values_list("pk", flat=True)
    )
    return conversions_attribute(order_ids=order_ids)
