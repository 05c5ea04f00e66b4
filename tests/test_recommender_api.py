from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from campaigns.recommender.service import cache_clear
from customers.models import Customer, Order, OrderLine, Product

URL = "/api/v1/customers/{}/recommendations"
TOKEN = "s3cret-token"


@pytest.fixture(autouse=True)
def _tokens(settings):
    settings.API_TOKENS = ["other-token", TOKEN]
    cache_clear()
    yield
    cache_clear()


@pytest.fixture
def shop(db):
    products = Product.objects.bulk_create(
        [Product(sku=f"P{i}", name=f"Product {i}", price=Decimal("2.50")) for i in range(8)]
    )
    start = datetime(2024, 3, 1, tzinfo=UTC)
    customers = Customer.objects.bulk_create([Customer(external_id=f"K{i}") for i in range(6)])
    line_rows = []
    for i, customer in enumerate(customers):
        for j in range(2):
            order = Order.objects.create(
                external_id=f"K{i}-{j}", customer=customer, placed_at=start + timedelta(days=3 * i + j)
            )
            basket = {products[0], products[(i + j) % 7 + 1]}
            line_rows += [
                OrderLine(order=order, line_no=n + 1, product=p, quantity=1, unit_price=p.price)
                for n, p in enumerate(sorted(basket, key=lambda p: p.pk))
            ]
    OrderLine.objects.bulk_create(line_rows)
    return customers


def _get(client, path, token=TOKEN, **params):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token is not None else {}
    return client.get(path, params, **headers)


def test_missing_token_is_401(client, shop):
    response = _get(client, URL.format("K1"), token=None)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert "token" in response.json()["error"]


@pytest.mark.parametrize("header", ["Bearer wrong", "Bearer ", "Basic " + TOKEN, TOKEN])
def test_bad_token_is_401(client, shop, header):
    response = client.get(URL.format("K1"), HTTP_AUTHORIZATION=header)
    assert response.status_code == 401


def test_no_configured_tokens_rejects_everyone(client, shop, settings):
    settings.API_TOKENS = []
    assert _get(client, URL.format("K1")).status_code == 401


def test_unknown_customer_is_404(client, shop):
    response = _get(client, URL.format("nobody"))
    assert response.status_code == 404
    assert "nobody" in response.json()["error"]


def test_unknown_or_foreign_anchor_order_is_404(client, shop):
    assert _get(client, URL.format("K1"), anchor_order="missing").status_code == 404
    assert _get(client, URL.format("K1"), anchor_order="K2-0").status_code == 404  # someone else's order


@pytest.mark.parametrize("k", ["0", "21", "abc", "-3", "2.5"])
def test_bad_k_is_400(client, shop, k):
    response = _get(client, URL.format("K1"), k=k)
    assert response.status_code == 400
    assert "k must be" in response.json()["error"]


def test_recommendations_for_a_customer(client, shop):
    response = _get(client, URL.format("K1"), k="2", anchor_order="K1-1")
    assert response.status_code == 200
    body = response.json()
    assert body["customer"] == "K1" and body["anchor_order"] == "K1-1"
    assert 1 <= len(body["recommendations"]) <= 2
    owned = set(
        OrderLine.objects.filter(order__customer__external_id="K1").values_list("product_id", flat=True)
    )
    for rec in body["recommendations"]:
        assert rec["product_id"] not in owned
        assert 0.0 <= rec["score"] <= 1.0 and rec["reason"] and rec["sku"]


def test_post_is_not_allowed(client, shop):
    response = client.post(URL.format("K1"), HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 405
