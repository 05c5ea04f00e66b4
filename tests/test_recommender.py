import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import joblib
import numpy as np
import pytest
from django.conf import settings
from django.core.management import call_command

from campaigns.models import ModelVersion
from campaigns.recommender import Recommendation, recommend_for_customers
from campaigns.recommender.data import catalogue_load, lines_load
from campaigns.recommender.evaluation import evaluation_run
from campaigns.recommender.features import (
    FEATURES,
    candidates_build,
    features_build,
    profiles_build,
    sources_compute,
)
from campaigns.recommender.metrics import ranking_metrics
from campaigns.recommender.service import cache_clear, model_version_activate, model_version_train
from customers.models import Customer, Order, OrderLine, Product

START = datetime(2024, 1, 1, 9, tzinfo=UTC)
DAYS = 240


@pytest.fixture(autouse=True)
def _fresh_cache():
    cache_clear()
    yield
    cache_clear()


def shop_create(*, customers: int = 120, seed: int = 3) -> dict:
    """A small shop: CANDLE is bought with LANTERN or, mostly, within days after it; the marketer lists
    HOOK as LANTERN's complement (no sales history); 24 unrelated products are bought at random."""
    rng = random.Random(seed)
    names = ["LANTERN", "CANDLE", "HOOK", "SOAP"] + [f"UNRELATED {i}" for i in range(24)]
    products = Product.objects.bulk_create(
        [
            Product(
                sku=f"SKU{i}",
                name=name,
                category="garden" if i % 2 else "home",
                price=Decimal("4.00") + i,
                repurchasable=name == "SOAP",
            )
            for i, name in enumerate(names)
        ]
    )
    by_name = {p.name: p for p in products}
    by_name["LANTERN"].complements.add(by_name["HOOK"])
    unrelated = [p for p in products if p.name.startswith("UNRELATED")]
    weights = [1.0 / (i + 1) for i in range(len(unrelated))]
    people = Customer.objects.bulk_create([Customer(external_id=f"C{i}") for i in range(customers)])
    orders, lines = [], []

    def place(person, when, basket):
        order = Order(external_id=f"O{len(orders)}", customer=person, placed_at=when)
        orders.append(order)
        lines.extend((order, i, p) for i, p in enumerate(sorted(basket, key=lambda p: p.pk)))

    for person in people:
        for day in sorted(rng.sample(range(DAYS), rng.randint(2, 6))):
            when = START + timedelta(days=day, hours=rng.randint(0, 9))
            basket = set(rng.choices(unrelated, weights=weights, k=rng.randint(1, 3)))
            if rng.random() < 0.2:
                basket.add(by_name["SOAP"])
            if rng.random() < 0.3:
                basket.add(by_name["LANTERN"])
                if rng.random() < 0.4:
                    basket.add(by_name["CANDLE"])
                elif rng.random() < 0.8:
                    # The planted pattern: CANDLE follows LANTERN within days.
                    later = when + timedelta(days=rng.randint(2, 10))
                    place(person, later, {by_name["CANDLE"], rng.choice(unrelated)})
            place(person, when, basket)
    Order.objects.bulk_create(orders)
    OrderLine.objects.bulk_create(
        [OrderLine(order=o, line_no=i + 1, product=p, quantity=1, unit_price=p.price) for o, i, p in lines]
    )
    return by_name


def _customer_with(products: list[Product], *, when: datetime, name: str, status: str = "placed") -> Customer:
    customer, _ = Customer.objects.get_or_create(external_id=name)
    order = Order.objects.create(
        external_id=f"{name}-{when:%j%H%M}-{status}", customer=customer, placed_at=when, status=status
    )
    OrderLine.objects.bulk_create(
        [
            OrderLine(order=order, line_no=i + 1, product=p, quantity=1, unit_price=p.price)
            for i, p in enumerate(products)
        ]
    )
    return customer


def _ranks(recs: list[Recommendation], products: dict) -> dict[str, int]:
    by_pk = {p.pk: name for name, p in products.items()}
    return {by_pk[r.product_id]: i for i, r in enumerate(recs)}


@pytest.mark.django_db
def test_fallback_ranks_planted_partner_and_complement_above_unrelated():
    products = shop_create()
    buyer = _customer_with([products["LANTERN"]], when=START + timedelta(days=DAYS), name="buyer")
    recs = recommend_for_customers(customer_ids=[buyer.pk], k=10, as_of=START + timedelta(days=DAYS + 1))[
        buyer.pk
    ]
    ranks = _ranks(recs, products)
    assert all(r.model_version_id is None for r in recs)
    unrelated = [rank for name, rank in ranks.items() if name.startswith("UNRELATED")]
    assert ranks["HOOK"] < min(unrelated)
    assert ranks["CANDLE"] < min(unrelated)
    assert all(0.0 <= r.score <= 1.0 for r in recs)
    assert [r.score for r in recs] == sorted((r.score for r in recs), reverse=True)
    hook = recs[ranks["HOOK"]]
    assert "LANTERN" in hook.reason and "Goes with" in hook.reason


@pytest.mark.django_db
def test_owned_returned_and_inactive_products_are_never_offered():
    products = shop_create()
    owned = [products["LANTERN"], products["UNRELATED 0"], products["SOAP"]]
    customer = _customer_with(owned, when=START + timedelta(days=DAYS), name="owner")
    _customer_with(
        [products["CANDLE"]], when=START + timedelta(days=DAYS, hours=2), name="owner", status="returned"
    )
    Product.objects.filter(pk=products["HOOK"].pk).update(active=False)
    recs = recommend_for_customers(customer_ids=[customer.pk], k=20, as_of=START + timedelta(days=DAYS + 1))[
        customer.pk
    ]
    offered = {r.product_id for r in recs}
    assert offered, "the customer should still get offers"
    assert products["LANTERN"].pk not in offered and products["UNRELATED 0"].pk not in offered
    assert products["CANDLE"].pk not in offered  # returned
    assert products["HOOK"].pk not in offered  # inactive
    assert len(recs) == len(offered) <= 20


@pytest.mark.django_db
def test_k_min_score_and_categories_are_respected():
    products = shop_create()
    buyer = _customer_with([products["LANTERN"]], when=START + timedelta(days=DAYS), name="buyer")
    when = START + timedelta(days=DAYS + 1)
    assert len(recommend_for_customers(customer_ids=[buyer.pk], k=2, as_of=when)[buyer.pk]) == 2
    garden = recommend_for_customers(customer_ids=[buyer.pk], k=10, categories=["garden"], as_of=when)[
        buyer.pk
    ]
    assert garden and all(Product.objects.get(pk=r.product_id).category == "garden" for r in garden)
    assert recommend_for_customers(customer_ids=[buyer.pk], k=10, min_score=1.01, as_of=when) == {
        buyer.pk: []
    }


@pytest.mark.django_db
def test_trained_model_ranks_partner_first_and_reloads_identically():
    products = shop_create(customers=200)
    call_command("train_recommender", "--horizon-days", "30")
    version = ModelVersion.objects.get()
    assert version.is_active and (settings.MODEL_DIR / version.artefact).exists()
    buyer = _customer_with([products["LANTERN"]], when=START + timedelta(days=DAYS), name="buyer")
    when = START + timedelta(days=DAYS + 1)
    first = recommend_for_customers(customer_ids=[buyer.pk], k=10, as_of=when)[buyer.pk]
    ranks = _ranks(first, products)
    assert all(r.model_version_id == version.pk for r in first)
    unrelated = [rank for name, rank in ranks.items() if name.startswith("UNRELATED")]
    assert ranks["CANDLE"] < min(unrelated)
    assert "HOOK" in ranks  # the marketer's complement is always considered, even with no history
    assert "LANTERN" not in ranks

    # A saved and reloaded model gives the same scores on the same features.
    catalogue = catalogue_load()
    lines = lines_load(catalogue=catalogue)
    model_a = joblib.load(settings.MODEL_DIR / version.artefact)
    model_b = joblib.load(settings.MODEL_DIR / version.artefact)
    customers = np.array(sorted(lines["customer"].unique()))
    profiles = profiles_build(
        lines=lines, customer_ids=customers, as_of=np.full(len(customers), lines["t"].max() + 1)
    )
    sources = sources_compute(stats=model_a.stats, profiles=profiles)
    pairs = candidates_build(stats=model_a.stats, profiles=profiles, sources=sources, owned_policy="all")
    x = features_build(stats=model_a.stats, profiles=profiles, sources=sources, pairs=pairs)
    cols = {name: x[:, i] for i, name in enumerate(FEATURES)}
    np.testing.assert_array_equal(model_a.predict(x, cols), model_b.predict(x, cols))
    cache_clear()
    again = recommend_for_customers(customer_ids=[buyer.pk], k=10, as_of=when)[buyer.pk]
    assert again == first


@pytest.mark.django_db
def test_activation_keeps_one_active_and_scoring_follows_it():
    shop_create()
    first = model_version_train(horizon_days=30)
    second = model_version_train(horizon_days=30)
    assert first.is_active and not ModelVersion.objects.get(pk=second.pk).is_active
    model_version_activate(version=second)
    assert list(ModelVersion.objects.filter(is_active=True).values_list("pk", flat=True)) == [second.pk]
    customer = Customer.objects.order_by("pk").first()
    recs = recommend_for_customers(customer_ids=[customer.pk], k=3)[customer.pk]
    assert recs and {r.model_version_id for r in recs} == {second.pk}


def test_metrics_on_a_hand_computed_case():
    # Customer 0 bought items 1 and 2 before; the held-out truth is {2, 5, 7}; customer 1's truth is {3}.
    top = np.array([[5, 9, 2], [4, 8, -1]])
    m = ranking_metrics(
        top=top,
        truth_rows=np.array([0, 0, 0, 1]),
        truth_items=np.array([2, 5, 7, 3]),
        owned_rows=np.array([0, 0]),
        owned_items=np.array([1, 2]),
        n_items=10,
    )
    assert m["recall@3"] == pytest.approx((2 / 3 + 0) / 2)
    assert m["explore_recall@3"] == pytest.approx((1 / 2 + 0) / 2)  # explore truth: {5, 7} and {3}
    assert m["repeat_recall@3"] == pytest.approx(1.0)  # only customer 0 has a repeat item (2), found
    assert m["hit_rate@3"] == pytest.approx(0.5)
    ideal = 1 + 1 / np.log2(3) + 1 / np.log2(4)
    assert m["ndcg@3"] == pytest.approx(((1 + 1 / np.log2(4)) / ideal + 0) / 2)


@pytest.mark.django_db
def test_last_order_evaluation_holds_out_last_orders_and_reports_baselines():
    shop_create()
    result = evaluation_run(protocol="last-order", k=5, mode="all", horizon_days=30)
    eligible = sum(1 for c in Customer.objects.all() if c.orders.filter(status="placed").count() >= 2)
    assert result["customers"] == eligible
    assert set(result["baselines"]) == {
        "global_popularity",
        "popularity_unseen",
        "cooccurrence_unseen",
        "own_most_frequent",
    }
    for metrics in [result["model"], *result["baselines"].values()]:
        assert {"recall@5", "explore_recall@5", "repeat_recall@5", "ndcg@5", "hit_rate@5"} <= set(metrics)
        assert all(0.0 <= metrics[k] <= 1.0 for k in ("recall@5", "ndcg@5", "hit_rate@5"))
    assert result["baselines"]["popularity_unseen"]["repeat_recall@5"] == 0.0


@pytest.mark.django_db
def test_cascade_finishes_each_customers_best_pairs_with_the_full_model():
    shop_create(customers=200)
    version = model_version_train(horizon_days=30)
    model = joblib.load(settings.MODEL_DIR / version.artefact)
    assert model.algorithm == "hist_gradient_boosting"
    lines = lines_load(catalogue=catalogue_load())
    customers = np.array(sorted(lines["customer"].unique()))
    profiles = profiles_build(
        lines=lines, customer_ids=customers, as_of=np.full(len(customers), lines["t"].max() + 1)
    )
    sources = sources_compute(stats=model.stats, profiles=profiles)
    pairs = candidates_build(stats=model.stats, profiles=profiles, sources=sources, owned_policy="all")
    x = features_build(stats=model.stats, profiles=profiles, sources=sources, pairs=pairs)
    cols = {name: x[:, i] for i, name in enumerate(FEATURES)}
    rows = pairs["r"].to_numpy()
    full = model.predict(x, cols)
    cascade = model.predict(x, cols, rows=rows, keep_per_row=3)
    finished = ~np.isnan(cascade)
    np.testing.assert_allclose(cascade[finished], full[finished])
    # At least the 3 best of every customer, more only for the marketer's complements.
    plain = np.bincount(rows[finished & (cols["complement"] == 0)], minlength=len(customers))
    assert plain.max() <= 3
    assert (np.bincount(rows[finished], minlength=len(customers)) >= np.minimum(np.bincount(rows), 3)).all()
    assert (~finished).any()  # the shop's customers have more than 3 candidates each
