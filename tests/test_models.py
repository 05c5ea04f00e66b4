"""Each database constraint on the customers models rejects a bad row."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.db import IntegrityError, transaction

from customers.models import Customer, Order, OrderLine, Product

pytestmark = pytest.mark.django_db
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def order():
    customer = Customer.objects.create(external_id="c1", email="c1@example.com")
    return Order.objects.create(external_id="o1", customer=customer, placed_at=NOW)


@pytest.fixture
def product():
    return Product.objects.create(sku="SKU1", name="Mug", price=Decimal("3.50"))


def assert_rejected(create) -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        create()


def test_suppression_needs_a_time():
    assert_rejected(lambda: Customer.objects.create(external_id="c2", suppressed_reason="bounced"))
    assert_rejected(lambda: Customer.objects.create(external_id="c3", suppressed_at=NOW))
    ok = Customer.objects.create(external_id="c4", suppressed_reason="bounced", suppressed_at=NOW)
    assert ok.suppressed_reason == "bounced"


def test_consent_needs_a_time():
    assert_rejected(lambda: Customer.objects.create(external_id="c2", marketing_consent=True))
    ok = Customer.objects.create(external_id="c3", marketing_consent=True, consent_at=NOW)
    assert ok.is_mailable is False  # no email yet


def test_consent_cannot_be_switched_on_without_a_time():
    customer = Customer.objects.create(external_id="c2")
    assert_rejected(lambda: Customer.objects.filter(pk=customer.pk).update(marketing_consent=True))


def test_product_price_is_not_negative():
    assert_rejected(lambda: Product.objects.create(sku="NEG", price=Decimal("-0.01")))
    assert Product.objects.create(sku="FREE", price=Decimal("0")).price == 0
    assert Product.objects.create(sku="UNPRICED").price is None


@pytest.mark.parametrize("quantity", [0, -1])
def test_order_line_quantity_is_positive(order, product, quantity):
    assert_rejected(
        lambda: OrderLine.objects.create(
            order=order, line_no=1, product=product, quantity=quantity, unit_price=Decimal("1")
        )
    )


def test_order_line_unit_price_is_not_negative(order, product):
    assert_rejected(
        lambda: OrderLine.objects.create(
            order=order, line_no=1, product=product, quantity=1, unit_price=Decimal("-1")
        )
    )
    line = OrderLine.objects.create(order=order, line_no=1, product=product, quantity=2, unit_price=0)
    assert line.amount == 0


def test_order_line_numbers_are_unique_per_order(order, product):
    OrderLine.objects.create(order=order, line_no=1, product=product, quantity=1, unit_price=1)
    assert_rejected(
        lambda: OrderLine.objects.create(order=order, line_no=1, product=product, quantity=2, unit_price=1)
    )
    other = Order.objects.create(external_id="o2", customer=order.customer, placed_at=NOW)
    OrderLine.objects.create(order=other, line_no=1, product=product, quantity=1, unit_price=1)
    assert OrderLine.objects.filter(line_no=1).count() == 2


def test_external_ids_are_unique(order, product):
    assert_rejected(lambda: Customer.objects.create(external_id="c1"))
    assert_rejected(lambda: Order.objects.create(external_id="o1", customer=order.customer, placed_at=NOW))
    assert_rejected(lambda: Product.objects.create(sku="SKU1"))
    assert (Customer.objects.count(), Order.objects.count(), Product.objects.count()) == (1, 1, 1)
