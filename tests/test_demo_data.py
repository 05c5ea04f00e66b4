import datetime as dt
import re
import zoneinfo
from decimal import Decimal

import pandas as pd
import pytest
from django.core.management import CommandError, call_command

from campaigns.models import Offer
from customers.demo_data import DemoDataRefused, demo_shop_generate, demo_window
from customers.importing import customer_stats_refresh
from customers.models import Customer, Order, OrderLine, Product

END = dt.date(2026, 1, 1)


def generate(*, customers: int = 300, seed: int = 11, batch_customers: int = 120) -> dict:
    return demo_shop_generate(customers=customers, seed=seed, end=END, batch_customers=batch_customers)


def shop_snapshot() -> dict[str, list]:
    return {
        "customers": list(
            Customer.objects.order_by("external_id").values_list(
                "external_id",
                "email",
                "first_name",
                "last_name",
                "country",
                "timezone",
                "marketing_consent",
                "consent_at",
                "suppressed_reason",
                "suppressed_at",
            )
        ),
        "orders": list(
            Order.objects.order_by("external_id").values_list(
                "external_id", "customer__external_id", "placed_at", "total", "channel", "status"
            )
        ),
        "lines": list(
            OrderLine.objects.order_by("order__external_id", "line_no").values_list(
                "order__external_id", "line_no", "product__sku", "quantity", "unit_price"
            )
        ),
    }


def shop_wipe() -> None:
    OrderLine.objects.all().delete()
    Order.objects.all().delete()
    Customer.objects.all().delete()
    Product.objects.all().delete()


def lines_frame() -> pd.DataFrame:
    rows = OrderLine.objects.values_list(
        "order__customer_id", "order_id", "order__placed_at", "order__status", "product__sku", "product_id"
    )
    return pd.DataFrame(list(rows), columns=["customer", "order", "placed_at", "status", "sku", "product"])


@pytest.mark.django_db
def test_same_seed_gives_the_same_shop_and_another_seed_a_different_one():
    counts = generate(seed=11)
    first = shop_snapshot()
    shop_wipe()
    assert generate(seed=11) == counts
    assert shop_snapshot() == first
    shop_wipe()
    generate(seed=12)
    other = shop_snapshot()
    assert other["orders"] != first["orders"]
    assert other["lines"] != first["lines"]
    assert len(first["customers"]) == counts["customers"] == 300
    assert len(first["lines"]) == counts["order_lines"]


@pytest.mark.django_db
def test_orders_and_lines_are_consistent_and_inside_the_window():
    generate()
    start, end = demo_window(end=END)
    lines = pd.DataFrame(
        list(OrderLine.objects.values_list("order_id", "line_no", "quantity", "unit_price")),
        columns=["order", "line_no", "quantity", "unit_price"],
    )
    assert (lines["quantity"] > 0).all()
    assert (lines["unit_price"] >= 0).all()
    per_order = lines.groupby("order")["line_no"].agg(["min", "max", "count"])
    assert (per_order["min"] == 1).all() and (per_order["max"] == per_order["count"]).all()
    lines["amount"] = lines["quantity"] * lines["unit_price"]
    amounts = lines.groupby("order")["amount"].sum()
    orders = Order.objects.all()
    assert orders.count() == len(per_order)  # every order has lines
    for order in orders.only("id", "total", "placed_at", "external_id", "channel", "currency"):
        assert order.total == amounts[order.id]
        assert start <= order.placed_at < end
        assert order.external_id.startswith("D") and order.currency == "EUR"
    channels = set(orders.values_list("channel", flat=True))
    assert {"web", "store", "branch", "app"} <= channels
    statuses = pd.Series(list(orders.values_list("status", flat=True))).value_counts(normalize=True)
    assert statuses["placed"] > 0.9 and statuses["returned"] > 0


@pytest.mark.django_db
def test_customers_satisfy_the_model_and_mix_consent_and_suppression():
    generate()
    customers = list(Customer.objects.all())
    zones = zoneinfo.available_timezones()
    for c in customers:
        assert c.email.startswith("customer-") and c.email.split("@")[1] in {
            "example.com",
            "example.net",
            "example.org",
        }
        assert c.first_name and c.last_name and c.country
        assert c.timezone in zones
        assert (c.consent_at is not None) == c.marketing_consent
        assert c.consent_source == ("demo" if c.marketing_consent else "")
        assert (c.suppressed_at is not None) == (c.suppressed_reason != "")
        if c.suppressed_reason:
            assert c.suppressed_reason in {"unsubscribed", "bounced", "complained"}
            assert c.suppressed_at >= c.consent_at
    consenting = sum(c.marketing_consent for c in customers) / len(customers)
    assert 0.7 < consenting < 0.9
    assert any(c.suppressed_reason for c in customers)
    assert any(c.is_mailable for c in customers)
    assert len({c.external_id for c in customers}) == len(customers)


@pytest.mark.django_db
def test_catalogue_has_complements_urls_and_consumables():
    counts = generate(customers=20)
    products = Product.objects.all()
    assert counts["products_created"] == products.count() > 50
    for p in products:
        assert p.product_url.startswith("https://shop.example/")
        assert p.image_url.startswith("https://shop.example/")
        assert p.price is not None and p.price >= 0 and p.category and p.name
    laptop = Product.objects.get(sku="EL-LAP-13")
    assert {"EL-ACC-HUB", "EL-ACC-MSE"} <= set(laptop.complements.values_list("sku", flat=True))
    assert Product.objects.get(sku="BK-ACC-CUR").complements.filter(sku="BK-CARD-DEB").exists()
    assert Product.objects.get(sku="SA-PLAN-BIZ").complements.filter(sku="SA-MOD-SSO").exists()
    assert Product.objects.get(sku="EL-CNS-INKB").repurchasable
    assert not laptop.repurchasable
    assert Product.complements.through.objects.count() == counts["complement_links"]


@pytest.mark.django_db
def test_complements_are_bought_after_their_anchor_far_more_often_than_by_chance():
    generate(customers=300, seed=5)
    lines = lines_frame()
    first = lines.groupby(["customer", "product"])["placed_at"].min()
    by_product = {p: first.xs(p, level="product") for p in lines["product"].unique()}
    customers = lines["customer"].nunique()
    followed = anchors = chance_hits = chance_total = 0
    pairs = Product.complements.through.objects.values_list("from_product_id", "to_product_id")
    for anchor, complement in pairs:
        bought_anchor = by_product.get(anchor, pd.Series(dtype=object))
        bought_complement = by_product.get(complement, pd.Series(dtype=object))
        both = pd.concat([bought_anchor.rename("a"), bought_complement.rename("c")], axis=1, join="inner")
        anchors += len(bought_anchor)
        followed += int(((both["c"] >= both["a"]) & (both["c"] <= both["a"] + pd.Timedelta(days=60))).sum())
        # Chance: customers without the anchor buying the complement at any time in 18 months.
        chance_hits += len(bought_complement.index.difference(bought_anchor.index))
        chance_total += customers - len(bought_anchor)
    assert anchors > 100
    after_anchor, by_chance = followed / anchors, chance_hits / chance_total
    assert after_anchor > 0.2
    assert after_anchor > 3 * by_chance


@pytest.mark.django_db
def test_consumables_are_bought_again_and_demand_peaks_before_christmas():
    generate(customers=600, seed=9, batch_customers=600)
    lines = lines_frame()
    repurchasable = set(Product.objects.filter(repurchasable=True).values_list("id", flat=True))
    orders_per_pair = lines.groupby(["customer", "product"])["order"].nunique().reset_index()
    orders_per_pair["consumable"] = orders_per_pair["product"].isin(repurchasable)
    repeat_share = orders_per_pair.groupby("consumable")["order"].apply(lambda n: (n >= 2).mean())
    assert repeat_share[True] > 0.3
    assert repeat_share[True] > 3 * repeat_share[False]

    electronics = lines.loc[lines["sku"].str.startswith("EL-") & ~lines["product"].isin(repurchasable)]
    month = electronics.drop_duplicates("order")["placed_at"].dt.month.value_counts()
    assert month[12] > 1.5 * month[9]  # July to December occur twice in the 18 months


@pytest.mark.django_db
def test_lifetime_figures_match_customer_stats_refresh():
    generate()
    fields = ("id", "orders_count", "total_spent", "first_order_at", "last_order_at")
    written = list(Customer.objects.order_by("id").values_list(*fields))
    customer_stats_refresh(customer_ids=None)
    assert list(Customer.objects.order_by("id").values_list(*fields)) == written
    assert sum(row[1] for row in written) == Order.objects.filter(status="placed").count()
    assert sum(row[2] for row in written) > Decimal(0)


@pytest.mark.django_db
def test_refuses_a_database_that_already_has_customers():
    Customer.objects.create(external_id="someone")
    with pytest.raises(DemoDataRefused):
        generate(customers=10)
    assert Customer.objects.count() == 1 and not Order.objects.exists()


@pytest.mark.django_db
def test_command_generates_then_skips_with_if_empty(capsys):
    call_command("generate_demo_data", "--customers", "40", "--seed", "3", "--end", "2026-01-01", "-v", "0")
    out = capsys.readouterr().out
    assert "customers: 40" in out and "order lines:" in out
    orders = Order.objects.count()
    assert orders > 0

    call_command("generate_demo_data", "--customers", "40", "--seed", "3", "--if-empty")
    assert "already has 40 customers" in capsys.readouterr().out
    assert Customer.objects.count() == 40 and Order.objects.count() == orders

    with pytest.raises(CommandError, match="--if-empty"):
        call_command("generate_demo_data", "--customers", "40", "--seed", "3", "-v", "0")
    with pytest.raises(CommandError, match="--end"):
        call_command("generate_demo_data", "--customers", "40", "--end", "yesterday")


@pytest.mark.django_db
def test_command_also_prepares_the_demo_campaign():
    from campaigns.models import Campaign

    call_command("generate_demo_data", "--customers", "50", "--seed", "2", verbosity=0)
    campaign = Campaign.objects.get(name="Demo: post-purchase add-ons")
    assert campaign.kind == Campaign.Kind.POST_PURCHASE and campaign.segment and campaign.template


@pytest.mark.django_db
def test_the_demo_setup_dates_nothing_in_the_future(capsys):
    from django.db.models import Max
    from django.utils import timezone

    from campaigns.models import Campaign, Event, Message

    call_command("generate_demo_data", "--customers", "300", "--seed", "3", verbosity=0)
    call_command("demo_setup", verbosity=0)
    assert "simulated recipients' behaviour" in capsys.readouterr().out
    campaign = Campaign.objects.get(name="Demo: post-purchase add-ons")
    now = timezone.now()
    sent = Message.objects.filter(campaign=campaign, status="sent")
    assert sent.exists() and Event.objects.filter(message__campaign=campaign, is_simulated=True).exists()
    latest = [
        sent.aggregate(t=Max("sent_at"))["t"],
        Event.objects.aggregate(t=Max("occurred_at"))["t"],
        Order.objects.aggregate(t=Max("placed_at"))["t"],
        Customer.objects.aggregate(t=Max("last_order_at"))["t"],
    ]
    assert all(t <= now for t in latest), latest
    for message in sent.exclude(trigger_order=None).select_related("trigger_order")[:50]:
        assert message.trigger_order.placed_at <= message.sent_at  # sent after the order that asked for it

    # Offers' reasons name days of their customer's purchases: days the customer has an order on now,
    # not the days the orders moved with the demo's send had before.
    def day(when):
        d = when.astimezone(dt.UTC)
        return f"{d.day} {d:%B}" if d.year == now.year else f"{d.day} {d:%B %Y}"

    days: dict[int, set[str]] = {}
    for customer, placed in Order.objects.values_list("customer_id", "placed_at"):
        days.setdefault(customer, set()).add(day(placed))
    named, stale = 0, []
    for offer in Offer.objects.filter(message__campaign=campaign).select_related("message"):
        for named_day in re.findall(r" on (\d{1,2} [A-Z][a-z]+(?: \d{4})?)", offer.reason):
            named += 1
            if named_day not in days.get(offer.message.customer_id, set()):
                stale.append(offer.reason)
    assert named > 0 and not stale, stale[:3]
    # The stored offers the next campaign sends from were scored after the demo's orders moved and its
    # recipients bought: their reasons name days of the customers' orders too.
    from campaigns.models import StoredOffers

    stored = [
        (customer, reason)
        for customer, offers in StoredOffers.objects.values_list("customer_id", "offers")
        for _, _, reason in offers
    ]
    named_days = [
        (c, d) for c, reason in stored for d in re.findall(r" on (\d{1,2} [A-Z][a-z]+(?: \d{4})?)", reason)
    ]
    assert named_days and all(d in days.get(c, set()) for c, d in named_days)
    from campaigns.reports.queries import window_orders

    # Simulated orders of more than one product now and then: the demo's cross-sell ratio is not 0.
    assert window_orders(scope={"campaign": campaign}, status="sent")["cross_sell_ratio"] > 0
