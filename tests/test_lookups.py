"""`__any`: the rows `__in` finds, with the ids as one array parameter on PostgreSQL."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from customers.models import Customer, Order

pytestmark = pytest.mark.django_db


@pytest.fixture
def customers():
    people = [Customer.objects.create(external_id=f"c{i}", email=f"c{i}@example.com") for i in range(5)]
    return people


@pytest.mark.parametrize("picked", [[], [0], [0, 2, 4], [1, 1, 3]])
def test_any_finds_what_in_finds(customers, picked):
    ids = [customers[i].pk for i in picked]
    expected = set(Customer.objects.filter(pk__in=ids).values_list("pk", flat=True))
    assert set(Customer.objects.filter(pk__any=ids).values_list("pk", flat=True)) == expected
    assert set(Customer.objects.filter(id__any=set(ids) | {None}).values_list("pk", flat=True)) == expected


def test_any_on_a_foreign_key_and_in_an_update(customers):
    from datetime import UTC, datetime

    when = datetime(2026, 5, 1, tzinfo=UTC)
    for c in customers:
        Order.objects.create(external_id=f"o{c.pk}", customer=c, placed_at=when)
    ids = [customers[0].pk, customers[3].pk]
    assert Order.objects.filter(customer_id__any=ids).count() == 2
    assert Order.objects.filter(customer__any=ids).count() == 2
    assert Customer.objects.filter(pk__any=ids).update(first_name="Any") == 2
    assert set(Customer.objects.filter(first_name="Any").values_list("pk", flat=True)) == set(ids)


def test_no_ids_no_statement(customers):
    with CaptureQueriesContext(connection) as queries:
        assert list(Customer.objects.filter(pk__any=[])) == []
    assert len(queries) == 0


def test_on_postgresql_the_ids_are_one_parameter(customers):
    if connection.vendor != "postgresql":
        pytest.skip("IN elsewhere")
    ids = [c.pk for c in customers]
    sql, params = Customer.objects.filter(pk__any=ids).values_list("pk").query.sql_with_params()
    assert "= ANY(%s::bigint[])" in sql and params == (ids,)
