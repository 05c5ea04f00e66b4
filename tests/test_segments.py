import datetime as dt
from decimal import Decimal

import pytest
from django.urls import reverse

from campaigns.models import Segment
from campaigns.segments import (
    SegmentError,
    rfm_band_expression,
    segment_audience,
    segment_preview,
    segment_queryset,
    segment_rules_validate,
)
from customers.models import Customer, Order, OrderLine, Product

NOW = dt.datetime(2024, 6, 1, 12, 0, tzinfo=dt.UTC)


def ago(days: float) -> dt.datetime:
    return NOW - dt.timedelta(days=days)


def make_customer(name, *, country="", consent=True, email=None, suppressed="", orders=0, spent=0, last=None):
    return Customer.objects.create(
        external_id=name,
        email=f"{name}@example.com" if email is None else email,
        country=country,
        marketing_consent=consent,
        consent_at=ago(1000) if consent else None,
        suppressed_reason=suppressed,
        suppressed_at=ago(1) if suppressed else None,
        orders_count=orders,
        total_spent=Decimal(spent),
        last_order_at=None if last is None else ago(last),
    )


def make_order(customer, product, *, days_ago, status=Order.Status.PLACED):
    order = Order.objects.create(
        external_id=f"{customer.external_id}-{product.sku}-{days_ago}-{status}",
        customer=customer,
        placed_at=ago(days_ago),
        total=Decimal("10"),
        status=status,
    )
    OrderLine.objects.create(order=order, line_no=1, product=product, quantity=1, unit_price=Decimal("10"))


@pytest.fixture
def shop(db):
    """Seven customers, one per RFM band and a few edge cases; see the comments for who bought what."""
    mug = Product.objects.create(sku="MUG", name="Mug", category="Kitchen")
    lamp = Product.objects.create(sku="LAMP", name="Lamp", category="Lighting")
    people = {
        "alice": make_customer("alice", country="United Kingdom", orders=6, spent=600, last=10),
        "bob": make_customer("bob", country="france", orders=4, spent=300, last=60),
        "carol": make_customer("carol", country="Germany", consent=False, orders=1, spent=20, last=5),
        "dave": make_customer(
            "dave", country="united kingdom", suppressed="unsubscribed", orders=2, spent=50, last=40
        ),
        "erin": make_customer("erin", email="", orders=3, spent=90, last=200),
        "frank": make_customer("frank", country="France"),
        "grace": make_customer("grace", country="Spain", consent=False, orders=2, spent=40, last=400),
    }
    make_order(people["alice"], mug, days_ago=10)
    make_order(people["bob"], lamp, days_ago=60)
    make_order(people["bob"], mug, days_ago=5, status=Order.Status.CANCELLED)  # never counts
    make_order(people["carol"], mug, days_ago=5)
    make_order(people["erin"], mug, days_ago=200)
    make_order(people["grace"], lamp, days_ago=400)
    return people


def names(qs) -> set[str]:
    return set(qs.values_list("external_id", flat=True))


def rule(field, op, value) -> dict:
    return {"op": "and", "rules": [{"field": field, "op": op, "value": value}]}


EVERYONE = {"alice", "bob", "carol", "dave", "erin", "frank", "grace"}


@pytest.mark.parametrize(
    ("field", "op", "value", "expected"),
    [
        ("orders_count", "=", 4, {"bob"}),
        ("orders_count", "!=", 4, EVERYONE - {"bob"}),
        ("orders_count", ">", 4, {"alice"}),
        ("orders_count", ">=", 4, {"alice", "bob"}),
        ("orders_count", "<", 2, {"carol", "frank"}),
        ("orders_count", "<=", "2", {"carol", "dave", "frank", "grace"}),
        ("total_spent", "=", 300, {"bob"}),
        ("total_spent", "!=", 300, EVERYONE - {"bob"}),
        ("total_spent", ">", 299.5, {"alice", "bob"}),
        ("total_spent", ">=", 600, {"alice"}),
        ("total_spent", "<", 40, {"carol", "frank"}),
        ("total_spent", "<=", "40", {"carol", "frank", "grace"}),
        # alice's last order is 2024-05-22 12:00: neither before nor after that day.
        ("last_order_at", "after", "2024-05-21", {"alice", "carol"}),
        ("last_order_at", "after", "2024-05-22", {"carol"}),
        ("last_order_at", "after", "9999-12-31", set()),  # after the last day there is: nobody, no overflow
        ("last_order_at", "before", "2024-05-22", {"bob", "dave", "erin", "grace"}),
        ("last_order_at", "before", "2024-05-23", {"alice", "bob", "dave", "erin", "grace"}),
        # days since: alice 10, bob 60, carol 5, dave 40, erin 200, grace 400, frank never ordered.
        ("days_since_last_order", "=", 10, {"alice"}),
        ("days_since_last_order", "!=", 10, {"bob", "carol", "dave", "erin", "grace"}),
        ("days_since_last_order", ">", 60, {"erin", "grace"}),
        ("days_since_last_order", ">=", 60, {"bob", "erin", "grace"}),
        ("days_since_last_order", "<", 10, {"carol"}),
        ("days_since_last_order", "<=", 10, {"alice", "carol"}),
        ("country", "in", ["UNITED KINGDOM", " France "], {"alice", "bob", "dave", "frank"}),
        ("country", "not in", ["united kingdom", "france"], {"carol", "erin", "grace"}),
        ("marketing_consent", "=", True, {"alice", "bob", "dave", "erin", "frank"}),
        ("marketing_consent", "=", False, {"carol", "grace"}),
        ("rfm_band", "in", ["champions", "new"], {"alice", "carol"}),
        ("rfm_band", "not in", ["hibernating"], {"alice", "bob", "carol", "dave", "erin"}),
        # bob's recent mug order was cancelled: it does not count.
        ("bought", "within", {"sku": "MUG", "days": 30}, {"alice", "carol"}),
        ("bought", "not within", {"sku": "MUG", "days": 30}, EVERYONE - {"alice", "carol"}),
        ("bought", "within", {"category": "kitchen", "days": 365}, {"alice", "carol", "erin"}),
        ("bought", "within", {"category": "Lighting", "days": 365}, {"bob"}),
        ("bought", "not within", {"category": "Lighting", "days": 500}, EVERYONE - {"bob", "grace"}),
    ],
)
def test_each_field_and_operator(shop, field, op, value, expected):
    assert names(segment_queryset(rules=rule(field, op, value), now=NOW)) == expected


def test_empty_rules_match_everyone(shop):
    assert names(segment_queryset(rules={}, now=NOW)) == EVERYONE
    assert names(segment_queryset(rules={"op": "or", "rules": []}, now=NOW)) == EVERYONE


def test_rfm_bands_are_one_per_customer(shop):
    bands = dict(Customer.objects.annotate(band=rfm_band_expression(NOW)).values_list("external_id", "band"))
    assert bands == {
        "alice": "champions",
        "bob": "loyal",
        "carol": "new",
        "dave": "promising",
        "erin": "at_risk",
        "frank": "hibernating",
        "grace": "hibernating",
    }


@pytest.mark.django_db
def test_rfm_band_boundaries():
    def band(**kwargs):
        customer = make_customer("x", **kwargs)
        value = Customer.objects.annotate(band=rfm_band_expression(NOW)).get(pk=customer.pk).band
        customer.delete()
        return value

    assert band(orders=2, spent=1000, last=30) == "champions"  # big spender
    assert band(orders=5, spent=100, last=31) == "loyal"
    assert band(orders=4, spent=100, last=91) == "at_risk"
    assert band(orders=3, spent=100, last=70) == "at_risk"
    assert band(orders=3, spent=100, last=366) == "hibernating"
    assert band(orders=1, spent=10, last=31) == "hibernating"
    assert band(orders=2, spent=10, last=61) == "hibernating"


def test_and_or_nesting(shop):
    rules = {
        "op": "or",
        "rules": [
            {
                "op": "and",
                "rules": [
                    {"field": "country", "op": "in", "value": ["united kingdom"]},
                    {"field": "orders_count", "op": ">=", "value": 5},
                ],
            },
            {
                "op": "and",
                "rules": [
                    {"field": "rfm_band", "op": "in", "value": ["new", "at_risk"]},
                    {"field": "bought", "op": "within", "value": {"sku": "MUG", "days": 30}},
                ],
            },
        ],
    }
    assert names(segment_queryset(rules=rules, now=NOW)) == {"alice", "carol"}
    rules["op"] = "and"
    assert names(segment_queryset(rules=rules, now=NOW)) == set()


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        (
            {"op": "and", "rules": [rule("orders_count", "=", 1), {"field": "spend", "op": "=", "value": 1}]},
            "rules[1]: unknown field 'spend'",
        ),
        (
            {"op": "or", "rules": [rule("orders_count", "=", 1), rule("spend", "=", 1)]},
            "rules[1].rules[0]: unknown field 'spend'",
        ),
        (rule(["country"], "in", ["UK"]), "rules[0]: unknown field ['country']"),
        (rule({"f": 1}, "in", ["UK"]), "rules[0]: unknown field {'f': 1}"),
        (rule("country", ["in"], ["UK"]), "rules[0].op: ['in'] is not an operator for 'country'"),
        (rule("orders_count", ">", "abc"), "rules[0].value: 'abc' is not a whole number"),
        (rule("orders_count", ">", 1.5), "rules[0].value: 1.5 is not a whole number"),
        (rule("orders_count", "~", 1), "rules[0].op: '~' is not an operator for 'orders_count'"),
        (rule("total_spent", ">", "lots"), "rules[0].value: 'lots' is not a number"),
        (rule("total_spent", ">", "NaN"), "rules[0].value: 'NaN' is not a number"),
        (rule("last_order_at", "before", "01/02/2024"), "rules[0].value: '01/02/2024' is not a date"),
        (rule("last_order_at", "before", "2024-02-30"), "rules[0].value: '2024-02-30' is not a date"),
        (rule("days_since_last_order", "<", -1), "rules[0].value: -1 is less than 0"),
        (rule("country", "in", "UK"), "rules[0].value: must be a non-empty list of strings"),
        (rule("country", "in", ["UK", 3]), "rules[0].value[1]: 3 is not a non-empty string"),
        (rule("marketing_consent", "=", "yes"), "rules[0].value: must be true or false"),
        (rule("rfm_band", "in", ["vip"]), "rules[0].value[0]: 'vip' is not an RFM band"),
        (rule("bought", "within", {"sku": "MUG"}), 'rules[0].value: "days" is missing'),
        (rule("bought", "within", {"sku": "MUG", "days": 0}), "rules[0].value.days: 0 is less than 1"),
        (rule("bought", "within", {"sku": "A", "category": "B", "days": 3}), "exactly one of"),
        (
            {"op": "and", "rules": [{"field": "bought", "op": "within", "value": {"sku": "A"}, "days": 3}]},
            'rules[0]: put "days" inside value',
        ),
        ({"op": "and", "rules": [{"field": "orders_count", "op": "="}]}, "rules[0].value: missing"),
        ({"op": "xor", "rules": [rule("orders_count", "=", 1)]}, "op: 'xor' is not a group operator"),
        ({"op": "and", "rules": [{"op": "or", "rules": []}]}, "rules[0].rules: an empty group"),
        ({"op": "and", "rules": [["orders_count", "=", 1]]}, "rules[0]: expected a rule"),
        ({"op": "and", "rules": "orders_count = 1"}, "rules: must be a list"),
        ({"field": "orders_count", "op": "=", "value": 1}, "top level: must be a group"),
    ],
)
def test_invalid_rules_are_refused_naming_the_path(rules, message):
    with pytest.raises(SegmentError) as excinfo:
        segment_rules_validate(rules=rules)
    assert message in str(excinfo.value)
    with pytest.raises(SegmentError):
        segment_queryset(rules=rules)


def test_deep_nesting_is_refused():
    rules: dict = rule("orders_count", "=", 1)
    for _ in range(10):
        rules = {"op": "and", "rules": [rules]}
    with pytest.raises(SegmentError, match="nested deeper than"):
        segment_rules_validate(rules=rules)


def test_audience_excludes_no_consent_suppressed_and_no_email(shop):
    segment = Segment.objects.create(name="all", rules={})
    # carol and grace did not consent, dave unsubscribed, erin has no email address.
    assert names(segment_audience(segment=segment, now=NOW)) == {"alice", "bob", "frank"}
    segment.rules = rule("marketing_consent", "=", False)
    assert names(segment_audience(segment=segment, now=NOW)) == set()


def test_compiled_segment_is_one_sql_statement(shop, django_assert_num_queries):
    rules = {
        "op": "or",
        "rules": [
            rule("bought", "within", {"category": "Kitchen", "days": 30}),
            {
                "op": "and",
                "rules": [
                    {"field": "rfm_band", "op": "not in", "value": ["hibernating"]},
                    {"field": "bought", "op": "not within", "value": {"sku": "LAMP", "days": 90}},
                    {"field": "country", "op": "in", "value": ["united kingdom"]},
                ],
            },
        ],
    }
    segment = Segment.objects.create(name="mixed", rules=rules)
    qs = segment_queryset(rules=rules, now=NOW)
    audience = segment_audience(segment=segment, now=NOW)
    with django_assert_num_queries(1):
        assert {c.external_id for c in list(qs)} == {"alice", "carol", "dave"}
    with django_assert_num_queries(1):
        assert {c.external_id for c in list(audience)} == {"alice"}


def test_preview_counts_and_samples(shop):
    segment = Segment.objects.create(name="buyers", rules=rule("orders_count", ">=", 1))
    preview = segment_preview(segment=segment, sample=3, now=NOW)
    assert preview["count"] == 6
    assert [c.external_id for c in preview["sample"]] == ["alice", "bob", "carol"]
    assert preview["sample"][0].rfm_band == "champions"


def test_admin_change_page_shows_count_and_sample(shop, admin_client):
    segment = Segment.objects.create(name="regulars", rules=rule("orders_count", ">=", 4))
    response = admin_client.get(reverse("admin:campaigns_segment_change", args=[segment.pk]))
    assert response.status_code == 200
    page = response.content.decode()
    assert "<strong>2</strong> customers match; <strong>2</strong> can be mailed" in page
    assert "alice@example.com" in page and "bob@example.com" in page
    assert "carol@example.com" not in page
    assert reverse("admin:customers_customer_change", args=[shop["alice"].pk]) in page


def test_admin_changelist_and_add_page_render(shop, admin_client):
    Segment.objects.create(name="regulars", rules=rule("orders_count", ">=", 4))
    changelist = admin_client.get(reverse("admin:campaigns_segment_changelist"))
    assert changelist.status_code == 200 and "regulars" in changelist.content.decode()
    add = admin_client.get(reverse("admin:campaigns_segment_add"))
    assert add.status_code == 200 and "live count" not in add.content.decode()


def test_admin_refuses_an_invalid_rule_with_its_path(db, admin_client):
    url = reverse("admin:campaigns_segment_add")
    bad = '{"op": "and", "rules": [{"field": "orders_count", "op": ">", "value": "abc"}]}'
    response = admin_client.post(url, {"name": "bad", "description": "", "rules": bad})
    assert response.status_code == 200
    assert "rules[0].value: &#x27;abc&#x27; is not a whole number" in response.content.decode()
    assert not Segment.objects.exists()

    broken = admin_client.post(url, {"name": "bad", "description": "", "rules": '{"op": "and",'})
    assert "Not valid JSON" in broken.content.decode()
    assert not Segment.objects.exists()


def test_admin_saves_a_valid_rule(db, admin_client):
    rules = '{"op": "or", "rules": [{"field": "country", "op": "in", "value": ["France"]}]}'
    response = admin_client.post(
        reverse("admin:campaigns_segment_add"), {"name": "french", "description": "", "rules": rules}
    )
    assert response.status_code == 302
    assert Segment.objects.get(name="french").rules["rules"][0]["value"] == ["France"]
    empty = admin_client.post(
        reverse("admin:campaigns_segment_add"), {"name": "everyone", "description": "", "rules": ""}
    )
    assert empty.status_code == 302
    assert Segment.objects.get(name="everyone").rules == {}
