"""Stored next-best offers: what the API serves without an anchor, and when it must score live instead."""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from campaigns.models import StoredOffers
from campaigns.recommender import recommend_for_customers
from campaigns.recommender.service import cache_clear, model_version_activate, model_version_train
from campaigns.recommender.stored import STORED_K, offers_for, offers_for_customers, offers_refresh
from customers.models import Customer, Order, Product
from customers.privacy import customer_erase
from customers.signals import orders_imported
from tests.test_recommender import shop_create

URL = "/api/v1/customers/{}/recommendations"
TOKEN = "stored-token"


@pytest.fixture
def trained(db, settings):
    settings.API_TOKENS = [TOKEN]
    cache_clear()
    shop_create(customers=60)
    version = model_version_train(horizon_days=30)
    assert version.is_active
    yield version
    cache_clear()


def _api(client, external_id: str, k: int = 3) -> dict:
    response = client.get(URL.format(external_id), {"k": k}, HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200, response.content
    return response.json()


def test_refresh_stores_what_live_scoring_returns(trained):
    now = timezone.now()
    stored = offers_refresh()
    customers = list(Customer.objects.order_by("pk").values_list("pk", flat=True))
    assert stored == len(customers) == StoredOffers.objects.count()
    live = recommend_for_customers(customer_ids=customers, k=STORED_K, as_of=now)
    for row in StoredOffers.objects.all():
        assert row.model_version_id == trained.pk
        assert [o[0] for o in row.offers] == [r.product_id for r in live[row.customer_id]]


def test_api_serves_the_stored_row_while_it_is_right(client, trained):
    offers_refresh()
    customer = Customer.objects.order_by("pk").first()
    row = StoredOffers.objects.get(customer=customer)
    # Mark the row so an answer from it can be told from a live one.
    row.offers = [[pid, 0.5, "stored reason"] for pid, _, _ in row.offers]
    row.save()
    body = _api(client, customer.external_id)
    assert [r["reason"] for r in body["recommendations"]] == ["stored reason"] * 3
    assert [r["product_id"] for r in body["recommendations"]] == [o[0] for o in row.offers[:3]]
    assert body["model_version"] == trained.pk


def test_a_deactivated_product_is_never_served_from_the_store(client, trained):
    offers_refresh()
    customer = Customer.objects.order_by("pk").first()
    first = StoredOffers.objects.get(customer=customer).offers[0][0]
    Product.objects.filter(pk=first).update(active=False)
    body = _api(client, customer.external_id)
    assert first not in [r["product_id"] for r in body["recommendations"]]
    assert len(body["recommendations"]) == 3


def test_a_newer_order_or_another_version_makes_the_api_score_live_and_store_again(client, trained):
    offers_refresh()
    customer = Customer.objects.order_by("pk").first()
    StoredOffers.objects.filter(customer=customer).update(offers=[[1, 0.5, "stale"]])
    # An order after the row was computed: the row is stale.
    Customer.objects.filter(pk=customer.pk).update(last_order_at=timezone.now() + timedelta(seconds=5))
    body = _api(client, customer.external_id)
    assert "stale" not in [r["reason"] for r in body["recommendations"]]
    assert StoredOffers.objects.get(customer=customer).offers[0][2] != "stale"  # replaced

    second = model_version_train(horizon_days=30)
    model_version_activate(version=second)
    other = Customer.objects.order_by("pk")[1]
    body = _api(client, other.external_id)
    assert body["model_version"] == second.pk
    assert StoredOffers.objects.get(customer=other).model_version_id == second.pk


def test_an_old_row_is_not_served(trained):
    offers_refresh()
    customer = Customer.objects.order_by("pk").first()
    StoredOffers.objects.filter(customer=customer).update(
        offers=[[1, 0.5, "old"]], computed_at=timezone.now() - timedelta(days=3)
    )
    recs = offers_for(customer_id=customer.pk, k=3)
    assert recs and "old" not in [r.reason for r in recs]


def test_imported_orders_and_erasure_drop_the_customers_rows(trained):
    offers_refresh()
    first, second = Customer.objects.order_by("pk")[:2]
    order = Order.objects.filter(customer=first).first()
    orders_imported.send(sender=Order, order_ids=[order.pk])
    assert not StoredOffers.objects.filter(customer=first).exists()
    assert StoredOffers.objects.filter(customer=second).exists()
    customer_erase(customer=second)
    assert not StoredOffers.objects.filter(customer=second).exists()


def test_command_refreshes_and_refuses_without_a_model(trained):
    out = StringIO()
    call_command("refresh_offers", verbosity=0, stdout=out)
    assert f"stored offers for {Customer.objects.count()} customers" in out.getvalue()


def _mark_stored(customer) -> list:
    row = StoredOffers.objects.get(customer=customer)
    row.offers = [[pid, score, "stored reason"] for pid, score, _ in row.offers]
    row.save()
    return row.offers


def test_campaign_batches_take_stored_offers_and_score_the_rest_live(trained):
    offers_refresh()
    first, second, third = Customer.objects.order_by("pk")[:3]
    for customer in (first, second, third):
        _mark_stored(customer)
    StoredOffers.objects.filter(customer=third).update(computed_at=timezone.now() - timedelta(days=3))
    anchor = Order.objects.filter(customer=second).latest("placed_at")
    got = offers_for_customers(
        customer_ids=[first.pk, second.pk, third.pk], k=3, anchors={second.pk: anchor.pk}
    )
    assert [r.reason for r in got[first.pk]] == ["stored reason"] * 3
    assert got[second.pk] and "stored reason" not in {r.reason for r in got[second.pk]}  # anchored: live
    assert got[third.pk] and "stored reason" not in {r.reason for r in got[third.pk]}  # too old: live


def test_stored_offers_honour_the_campaigns_filters(trained):
    offers_refresh()
    customer = Customer.objects.order_by("pk").first()
    offers = _mark_stored(customer)
    categories = dict(Product.objects.values_list("pk", "category"))
    category = categories[offers[0][0]]
    got = offers_for_customers(customer_ids=[customer.pk], k=1, categories=[category])[customer.pk]
    assert [r.product_id for r in got] == [offers[0][0]] and got[0].reason == "stored reason"
    # A full stored list filtered below k cannot say what lies beneath it: scored live, filters applied.
    top = max(score for _, score, _ in offers)
    got = offers_for_customers(customer_ids=[customer.pk], k=3, min_score=top)[customer.pk]
    assert all(r.reason != "stored reason" and r.score >= top for r in got)
    got = offers_for_customers(customer_ids=[customer.pk], k=3, categories=[category])[customer.pk]
    assert got and all(categories[r.product_id] == category for r in got)


def test_version_page_shows_how_many_customers_have_stored_offers(admin_client, trained):
    url = f"/admin/campaigns/modelversion/{trained.pk}/change/"
    assert "none (scored live when asked)" in admin_client.get(url).content.decode()
    offers_refresh()
    page = admin_client.get(url).content.decode()
    assert f"{StoredOffers.objects.count():,} customers, last stored" in page


def test_a_refresh_stops_when_another_version_is_activated_meanwhile(trained, monkeypatch):
    from campaigns.recommender import stored

    second = model_version_train(horizon_days=30, activate=False)
    monkeypatch.setattr(stored, "CHUNK", 10)
    seen = []

    def progress(done, total):
        seen.append(done)
        if len(seen) == 1:
            model_version_activate(version=second)

    kept = offers_refresh(on_progress=progress)
    assert seen == [10]  # the first chunk only
    assert not StoredOffers.objects.filter(model_version=trained).exists()
    assert kept == StoredOffers.objects.filter(model_version=second).count()


def test_a_customer_erased_while_being_scored_gets_no_row_back(trained, monkeypatch):
    from campaigns.recommender import stored

    customer = Customer.objects.order_by("pk").first()
    score = stored.recommend_for_customers

    def erase_meanwhile(**kwargs):
        result = score(**kwargs)
        customer_erase(customer=Customer.objects.get(pk=customer.pk))
        return result

    monkeypatch.setattr(stored, "recommend_for_customers", erase_meanwhile)
    stored.offers_store(customer_ids=[customer.pk, customer.pk + 1])
    assert not StoredOffers.objects.filter(customer=customer).exists()
    assert StoredOffers.objects.filter(customer_id=customer.pk + 1).exists()


@pytest.mark.skipif(connection.vendor != "postgresql", reason="planner statistics of PostgreSQL")
def test_a_refresh_leaves_the_planner_statistics_current(trained):
    # Statistics taken when half the rows were missing, as before a first refresh or a version change.
    keep = StoredOffers.objects.count() // 2
    StoredOffers.objects.filter(pk__in=StoredOffers.objects.order_by("pk").values("pk")[keep:]).delete()
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE campaigns_storedoffers")
    assert _planner_rows() == keep
    offers_refresh()  # writes every customer's row
    assert _planner_rows() == StoredOffers.objects.count() > keep


def _planner_rows() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT reltuples FROM pg_class WHERE oid = 'campaigns_storedoffers'::regclass")
        return int(cursor.fetchone()[0])
