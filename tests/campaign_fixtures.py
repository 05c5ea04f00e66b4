"""A small shop where phone buyers often add a case: enough history for real offers."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from django.utils import timezone

from campaigns.models import Campaign, EmailTemplate, FrequencyPolicy, Segment
from customers.models import Customer, Order, OrderLine, Product

HTML = """<h1>Hello {{ customer.first_name }}</h1>
{% for offer in offers %}<div class="offer"><a href="{{ offer.url }}">{{ offer.name }}</a>
{{ offer.price|money(offer.currency) }} <span class="reason">{{ offer.reason }}</span>
<a class="button" href="{{ offer.accept_url }}">Yes please</a></div>{% endfor %}
<p><a href="https://shop.example/help">Help</a></p>"""
TEXT = "Hello {{ customer.first_name }}\n{% for offer in offers %}- {{ offer.name }}: {{ offer.url }}\n{% endfor %}"


def shop(*, recipients: int = 5, history: int = 30, now: dt.datetime | None = None) -> dict:
    now = now or timezone.now()
    products = {
        sku: Product.objects.create(sku=sku, name=name, category=cat, price=Decimal(price), currency="GBP")
        for sku, name, cat, price in [
            ("PHONE", "Phone X", "phones", "799"),
            ("CASE", "Leather case", "accessories", "29"),
            ("CHARGER", "Fast charger", "accessories", "19"),
            ("MUG", "Mug", "kitchen", "8"),
        ]
    }
    order_no = 0

    def order(customer, skus, when):
        nonlocal order_no
        order_no += 1
        o = Order.objects.create(
            external_id=f"O{order_no}", customer=customer, placed_at=when, total=Decimal("0"), currency="GBP"
        )
        for i, sku in enumerate(skus, start=1):
            OrderLine.objects.create(
                order=o, line_no=i, product=products[sku], quantity=1, unit_price=products[sku].price
            )
        return o

    for i in range(history):
        c = Customer.objects.create(external_id=f"H{i}", email=f"h{i}@example.com")
        order(c, ["PHONE"], now - dt.timedelta(days=200 - i))
        order(c, ["CASE", "CHARGER"] if i % 2 else ["CASE"], now - dt.timedelta(days=190 - i))
        if i % 5 == 0:
            order(c, ["MUG"], now - dt.timedelta(days=100))
    people = []
    for i in range(recipients):
        c = Customer.objects.create(
            external_id=f"R{i}",
            email=f"r{i}@example.com",
            first_name=f"Rec{i}",
            marketing_consent=True,
            consent_at=now,
            consent_source="test",
        )
        people.append(c)
        order(c, ["PHONE"], now - dt.timedelta(hours=30))
    from customers.importing import customer_stats_refresh

    customer_stats_refresh()
    template = EmailTemplate.objects.create(
        name="Add-ons", subject="{{ customer.first_name }}, add-ons for you", html=HTML, text=TEXT
    )
    segment = Segment.objects.create(
        name="Buyers", rules={"op": "and", "rules": [{"field": "orders_count", "op": ">=", "value": 1}]}
    )
    FrequencyPolicy.objects.create(
        name="Default", is_default=True, max_messages=2, window_days=7, min_gap_hours=0
    )
    return {
        "products": products,
        "recipients": people,
        "template": template,
        "segment": segment,
        "order": order,
    }


def campaign(*, template, segment, name="Phone add-ons", **fields) -> Campaign:
    fields.setdefault("holdout_percent", 0)
    return Campaign.objects.create(name=name, template=template, segment=segment, **fields)
