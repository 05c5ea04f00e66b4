"""Attribution: offered products bought within the window become conversions; holdouts count any purchase."""

import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone

from campaigns.attribution import conversions_attribute, conversions_attribute_recent
from campaigns.models import Conversion, Event, Message
from customers.models import Order, OrderLine, Product
from customers.signals import orders_imported
from tests.test_tracking import sent_message


def order(customer, placed_at, lines, status=Order.Status.PLACED, external_id=None):
    o = Order.objects.create(
        external_id=external_id or f"o{Order.objects.count() + 1}",
        customer=customer,
        placed_at=placed_at,
        status=status,
    )
    for line_no, (product, quantity, price) in enumerate(lines, start=1):
        OrderLine.objects.create(
            order=o, line_no=line_no, product=product, quantity=quantity, unit_price=Decimal(price)
        )
    return o


def human_click(message, at):
    Event.objects.create(kind="click", message=message, customer=message.customer, occurred_at=at)


@pytest.mark.django_db
def test_offered_product_inside_the_delivery_window_converts_with_line_revenue():
    msg, offers = sent_message(sent_ago=dt.timedelta(days=10))
    other = Product.objects.create(sku="OTHER", name="Other")
    o = order(
        msg.customer, msg.sent_at + dt.timedelta(days=3), [(offers[0].product, 2, "9.50"), (other, 1, "5")]
    )
    assert conversions_attribute(order_ids=[o.pk]) == 1
    conversion = Conversion.objects.get()
    assert (conversion.message_id, conversion.offer_id, conversion.product_id, conversion.is_holdout) == (
        msg.pk,
        offers[0].pk,
        offers[0].product_id,
        False,
    )
    assert conversion.revenue == Decimal("19.00")
    assert Event.objects.get(kind="conversion").offer_id == offers[0].pk
    # Idempotent: running again adds nothing.
    assert conversions_attribute(order_ids=[o.pk]) == 0
    assert Conversion.objects.count() == 1


@pytest.mark.django_db
def test_outside_the_window_before_sending_or_not_placed_does_not_convert(settings):
    settings.ATTRIBUTION_DELIVERY_DAYS = 30
    msg, offers = sent_message(sent_ago=dt.timedelta(days=60))
    product = offers[0].product
    late = order(msg.customer, msg.sent_at + dt.timedelta(days=31), [(product, 1, "9.50")])
    early = order(msg.customer, msg.sent_at - dt.timedelta(hours=1), [(product, 1, "9.50")])
    returned = order(
        msg.customer, msg.sent_at + dt.timedelta(days=1), [(product, 1, "9.50")], status="returned"
    )
    assert conversions_attribute(order_ids=[late.pk, early.pk, returned.pk]) == 0
    assert not Conversion.objects.exists()


@pytest.mark.django_db
def test_a_human_click_extends_the_window_but_a_scanner_click_does_not(settings):
    settings.ATTRIBUTION_DELIVERY_DAYS = 30
    settings.ATTRIBUTION_CLICK_DAYS = 7
    msg, offers = sent_message(sent_ago=dt.timedelta(days=60))
    product = offers[0].product
    Event.objects.create(
        kind="click",
        message=msg,
        customer=msg.customer,
        occurred_at=msg.sent_at + dt.timedelta(days=28),
        is_machine=True,
        machine_reason="scanner agent",
    )
    o = order(msg.customer, msg.sent_at + dt.timedelta(days=33), [(product, 1, "9.50")])
    assert conversions_attribute(order_ids=[o.pk]) == 0
    human_click(msg, msg.sent_at + dt.timedelta(days=28))
    assert conversions_attribute(order_ids=[o.pk]) == 1
    beyond = order(msg.customer, msg.sent_at + dt.timedelta(days=36), [(product, 1, "9.50")])
    assert conversions_attribute(order_ids=[beyond.pk]) == 0


@pytest.mark.django_db
def test_an_acceptance_extends_the_window_as_a_click_does(settings):
    settings.ATTRIBUTION_DELIVERY_DAYS = 30
    settings.ATTRIBUTION_CLICK_DAYS = 7
    msg, offers = sent_message(sent_ago=dt.timedelta(days=60))
    Event.objects.create(
        kind="accept",
        message=msg,
        customer=msg.customer,
        offer=offers[0],
        occurred_at=msg.sent_at + dt.timedelta(days=28),
    )
    o = order(msg.customer, msg.sent_at + dt.timedelta(days=33), [(offers[0].product, 1, "9.50")])
    assert conversions_attribute(order_ids=[o.pk]) == 1


@pytest.mark.django_db
def test_window_lengths_come_from_settings(settings):
    settings.ATTRIBUTION_DELIVERY_DAYS = 2
    msg, offers = sent_message(sent_ago=dt.timedelta(days=10))
    o = order(msg.customer, msg.sent_at + dt.timedelta(days=3), [(offers[0].product, 1, "9.50")])
    assert conversions_attribute(order_ids=[o.pk]) == 0
    settings.ATTRIBUTION_DELIVERY_DAYS = 4
    assert conversions_attribute(order_ids=[o.pk]) == 1


@pytest.mark.django_db
def test_holdout_counts_any_product_within_the_delivery_window():
    msg, _ = sent_message(email="hold@example.com", status=Message.Status.HOLDOUT)
    Message.objects.filter(pk=msg.pk).update(created_at=timezone.now() - dt.timedelta(days=40))
    msg.refresh_from_db()
    anything = Product.objects.create(sku="ANY", name="Anything")
    inside = order(msg.customer, msg.created_at + dt.timedelta(days=5), [(anything, 3, "2.00")])
    outside = order(msg.customer, msg.created_at + dt.timedelta(days=31), [(anything, 1, "2.00")])
    assert conversions_attribute(order_ids=[inside.pk, outside.pk]) == 1
    conversion = Conversion.objects.get()
    assert (conversion.order_id, conversion.offer_id, conversion.is_holdout, conversion.revenue) == (
        inside.pk,
        None,
        True,
        Decimal("6.00"),
    )
    assert not Event.objects.filter(kind="conversion").exists()


@pytest.mark.django_db
def test_last_touch_when_two_messages_offered_the_same_product():
    first, offers = sent_message(sent_ago=dt.timedelta(days=5))
    second = Message.objects.create(
        campaign=first.campaign,
        customer=first.customer,
        status=Message.Status.SENT,
        sent_at=timezone.now() - dt.timedelta(days=2),
        run=None,
        trigger_order=order(
            first.customer, timezone.now() - dt.timedelta(days=20), [(offers[1].product, 1, "1")]
        ),
    )
    second_offer = second.offers.create(product=offers[0].product, rank=1, score=0.9, reason="again")
    o = order(first.customer, timezone.now() - dt.timedelta(days=1), [(offers[0].product, 1, "9.50")])
    assert conversions_attribute(order_ids=[o.pk]) == 1
    assert Conversion.objects.get().offer_id == second_offer.pk


@pytest.mark.django_db(transaction=True)
def test_orders_imported_signal_and_periodic_task_attribute():
    msg, offers = sent_message(sent_ago=dt.timedelta(days=3))
    o = order(msg.customer, msg.sent_at + dt.timedelta(days=1), [(offers[1].product, 1, "9.50")])
    orders_imported.send(sender=Order, order_ids=[o.pk])  # tasks run eagerly in tests
    assert Conversion.objects.filter(order=o, offer=offers[1]).exists()

    later = order(msg.customer, msg.sent_at + dt.timedelta(days=2), [(offers[0].product, 1, "9.50")])
    assert conversions_attribute_recent() == 1
    assert Conversion.objects.filter(order=later, offer=offers[0]).exists()


@pytest.mark.django_db
def test_sent_message_without_offers_or_clicks_attributes_nothing():
    msg, _ = sent_message(n=0)
    msg.offers.all().delete()
    product = Product.objects.create(sku="LONE", name="Lone")
    o = order(msg.customer, msg.sent_at + dt.timedelta(hours=1), [(product, 1, "1.00")])
    assert conversions_attribute(order_ids=[o.pk]) == 0
    assert conversions_attribute(order_ids=[]) == 0
