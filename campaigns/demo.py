"""The demo: a ready segment, template and post-purchase campaign, and simulated recipient behaviour.

Everything the simulation creates is flagged (Event.is_simulated, Conversion.is_simulated, orders with
an external id starting "SIM-"), so reports can say so and nothing is mistaken for real data.
"""

from __future__ import annotations

import datetime as dt
import random
import re

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from customers.importing import customer_stats_refresh, product_stats_refresh
from customers.models import Order, OrderLine

from .caps import policy_default
from .events import messages_first_touch_refresh
from .models import Campaign, Conversion, EmailTemplate, Event, Message, Offer, Segment
from .recommender.service import purchase_day

DEMO_CAMPAIGN = "Demo: post-purchase add-ons"

DEMO_HTML = """<h1 style="font-size:22px">Thanks for your order, {{ customer.first_name or "friend" }}!</h1>
<p>A few things that go well with what you just bought:</p>
{% for offer in offers %}
<div class="offer">
  {% if offer.image_url %}<img src="{{ offer.image_url }}" alt="">{% endif %}
  <a href="{{ offer.url }}"><strong>{{ offer.name }}</strong></a>
  {% if offer.price %}<span> {{ offer.price|money(offer.currency) }}</span>{% endif %}
  <div class="reason">{{ offer.reason }}</div>
  <p><a class="button" href="{{ offer.accept_url }}">Add to my order</a></p>
</div>
{% endfor %}
<p><a href="{{ offer_page_url }}">See all your offers</a></p>"""

DEMO_TEXT = """Thanks for your order, {{ customer.first_name or "friend" }}!

A few things that go well with what you just bought:
{% for offer in offers %}
- {{ offer.name }}{% if offer.price %} ({{ offer.price|money(offer.currency) }}){% endif %}: {{ offer.reason }}
  {{ offer.url }}
{% endfor %}
All your offers: {{ offer_page_url }}"""


def demo_campaign_ensure() -> Campaign:
    """Create (once) the demo's segment, template and post-purchase campaign."""
    policy_default()
    segment, _ = Segment.objects.get_or_create(
        name="Demo: recent buyers",
        defaults={
            "description": "Customers with at least one order in the last 60 days.",
            "rules": {"op": "and", "rules": [{"field": "days_since_last_order", "op": "<=", "value": 60}]},
        },
    )
    template, _ = EmailTemplate.objects.get_or_create(
        name="Demo: add-ons after a purchase",
        defaults={
            "subject": "{{ customer.first_name or 'Hello' }}, these go with your order",
            "html": DEMO_HTML,
            "text": DEMO_TEXT,
        },
    )
    campaign, _ = Campaign.objects.get_or_create(
        name=DEMO_CAMPAIGN,
        defaults={
            "kind": Campaign.Kind.POST_PURCHASE,
            "segment": segment,
            "template": template,
            "delay_hours": 24,
            "trigger_lookback_days": 30,
            "holdout_percent": 10,
            "offers_per_email": 3,
            "is_simulated": True,
        },
    )
    return campaign


# The simulated behaviour after a send spans up to 20 days (later purchases): the demo's send is dated
# this far back, so that all of it has happened by the day of the demo.
DEMO_BACKDATE = dt.timedelta(days=21)


@transaction.atomic
def demo_send_backdate(*, campaign: Campaign, by: dt.timedelta = DEMO_BACKDATE) -> None:
    """Move the demo campaign's send back in time, with the orders that triggered its messages (demo
    data too), so that nothing simulated after it is dated in the future: no report of the demo then
    shows days to come, or a customer value "as of" next month."""
    messages = Message.objects.filter(campaign=campaign)
    orders = Order.objects.filter(pk__in=messages.exclude(trigger_order=None).values("trigger_order_id"))
    customers = sorted(set(orders.values_list("customer_id", flat=True)))
    moved = list(orders.values_list("pk", "customer_id", "placed_at"))  # before the move
    orders.update(placed_at=F("placed_at") - by)
    _reasons_backdate(campaign, moved, by)
    for name in ("created_at", "claimed_at", "sent_at", "send_after", "delivered_at"):
        messages.filter(**{f"{name}__isnull": False}).update(**{name: F(name) - by})
    Offer.objects.filter(message__campaign=campaign).update(created_at=F("created_at") - by)
    for name in ("created_at", "planned_at", "finished_at"):
        campaign.runs.filter(**{f"{name}__isnull": False}).update(**{name: F(name) - by})
    for name in ("created_at", "started_at", "finished_at"):
        Campaign.objects.filter(pk=campaign.pk, **{f"{name}__isnull": False}).update(**{name: F(name) - by})
    customer_stats_refresh(customer_ids=customers)


def _reasons_backdate(
    campaign: Campaign, moved: list[tuple[int, int, dt.datetime]], by: dt.timedelta
) -> None:
    """An offer's reason names the day of a purchase of its customer's ("the phone you bought on
    3 May", recommender.service.purchase_day). Orders moved with the send (moved: id, customer and
    placed_at before the move) move in the reasons too, each day once; a day on which one of the
    customer's orders did not move stays as written."""
    now = timezone.now()
    days_moved: dict[int, dict[str, str]] = {}
    for _, customer, placed in moved:
        days_moved.setdefault(customer, {})[purchase_day(placed, now)] = purchase_day(placed - by, now)
    kept = (
        Order.objects.filter(customer_id__in=days_moved)
        .exclude(pk__in=[pk for pk, _, _ in moved])
        .values_list("customer_id", "placed_at")
    )
    for customer, when in kept:
        days_moved[customer].pop(purchase_day(when, now), None)
    offers = list(Offer.objects.filter(message__campaign=campaign).select_related("message"))
    for offer in offers:
        days = days_moved.get(offer.message.customer_id)
        if days:  # one pass: a day moved onto another moved day is not moved twice
            offer.reason = _DAY.sub(
                lambda m, days=days: f" on {days.get(m.group(1), m.group(1))}", offer.reason
            )
    Offer.objects.bulk_update(offers, ["reason"], batch_size=1000)


_DAY = re.compile(r" on (\d{1,2} [A-Z][a-z]+(?: \d{4})?)")


@transaction.atomic
def demo_events_simulate(*, campaign: Campaign, seed: int = 7) -> dict[str, int]:
    """Opens, clicks, acceptances and later purchases for a sent demo campaign, all flagged simulated."""
    rng = random.Random(seed)
    counts = {"opens": 0, "clicks": 0, "accepts": 0, "orders": 0}
    events, new_orders = [], []
    sent = Message.objects.filter(campaign=campaign, status=Message.Status.SENT).prefetch_related(
        "offers__product"
    )
    for message in sent:
        base = message.sent_at or timezone.now()
        if rng.random() < 0.07:  # image proxies pre-fetch the pixel: a machine open, flagged
            events.append(
                _event(message, Event.Kind.OPEN, base + dt.timedelta(seconds=2), machine="privacy proxy")
            )
        if rng.random() > 0.48:
            continue
        events.append(_event(message, Event.Kind.OPEN, base + dt.timedelta(hours=rng.uniform(0.2, 30))))
        counts["opens"] += 1
        offers = list(message.offers.all())
        if not offers or rng.random() > 0.3:
            continue
        offer = offers[0] if rng.random() < 0.6 else rng.choice(offers)
        when = base + dt.timedelta(hours=rng.uniform(1, 48))
        events.append(_event(message, Event.Kind.CLICK, when, offer=offer))
        counts["clicks"] += 1
        if rng.random() < 0.45:
            events.append(_event(message, Event.Kind.ACCEPT, when + dt.timedelta(minutes=2), offer=offer))
            counts["accepts"] += 1
            basket = [offer.product]
            others = [
                o.product for o in offers if o.pk != offer.pk and o.product.currency == offer.product.currency
            ]
            if others and rng.random() < 0.35:  # another add-on of the same email in the same order
                basket.append(rng.choice(others))
            new_orders.append((message.customer_id, basket, when + dt.timedelta(minutes=10)))
    # Everyone also buys on their own now and then, recipients and holdout alike: the baseline the
    # uplift is measured against. Only recipients were shown offers, so their acceptances come on top.
    members = Message.objects.filter(
        campaign=campaign, status__in=(Message.Status.SENT, Message.Status.HOLDOUT)
    )
    for message in members.order_by("pk"):
        if rng.random() < 0.05:
            bought = [
                line.product
                for line in OrderLine.objects.filter(order__customer_id=message.customer_id)
                .select_related("product")
                .order_by("pk")[:5]
            ]
            if bought:
                # Orders of one product or more, as real ones are: the cross-sell ratio's baseline.
                basket = [bought[0]]
                more = [p for p in bought[1:] if p.pk != bought[0].pk and p.currency == bought[0].currency]
                if more and rng.random() < 0.3:
                    basket.append(more[0])
                start = message.sent_at or message.created_at
                new_orders.append(
                    (message.customer_id, basket, start + dt.timedelta(days=rng.uniform(1, 20)))
                )
    Event.objects.bulk_create(events, ignore_conflicts=True)
    messages_first_touch_refresh(message_ids=sorted({e.message_id for e in events}))
    order_ids = []
    for i, (customer_id, products, when) in enumerate(new_orders):
        order = Order.objects.create(
            external_id=f"SIM-{campaign.pk}-{i}",
            customer_id=customer_id,
            placed_at=when,
            channel=Order.Channel.WEB,
            total=sum((p.price or 0) for p in products),
            currency=products[0].currency,
        )
        OrderLine.objects.bulk_create(
            OrderLine(order=order, line_no=n, product=p, quantity=1, unit_price=p.price or 0)
            for n, p in enumerate(products, start=1)
        )
        order_ids.append(order.pk)
    counts["orders"] = len(order_ids)
    if order_ids:
        from .attribution import conversions_attribute

        customer_stats_refresh(customer_ids=sorted({c for c, _, _ in new_orders}))
        product_stats_refresh(product_ids=sorted({p.pk for _, products, _ in new_orders for p in products}))
        conversions_attribute(order_ids=order_ids)
        Conversion.objects.filter(order_id__in=order_ids).update(is_simulated=True)
        Event.objects.filter(kind=Event.Kind.CONVERSION, message__campaign=campaign).update(is_simulated=True)
    return counts


def _event(message: Message, kind: str, when: dt.datetime, offer=None, machine: str = "") -> Event:
    return Event(
        kind=kind,
        message=message,
        campaign_id=message.campaign_id,
        offer=offer,
        customer_id=message.customer_id,
        occurred_at=when,
        user_agent="Demo simulation",
        is_machine=bool(machine),
        machine_reason=machine,
        is_simulated=True,
    )
