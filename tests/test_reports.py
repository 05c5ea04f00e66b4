"""Campaign reports against a small campaign whose every figure is computed by hand below."""

import datetime as dt
import math
import re
import statistics
from decimal import Decimal

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Group, User
from django.core.cache import cache
from django.core.management import call_command
from django.urls import reverse
from scipy import stats

from campaigns.models import Campaign, Conversion, EmailTemplate, Event, Message, ModelVersion, Offer
from campaigns.reports import campaign_report, customer_story, reports_refresh, uplift_mean, uplift_proportion
from customers.models import Customer, Order, OrderLine, Product

T0 = dt.datetime(2026, 1, 10, 9, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


def _template() -> EmailTemplate:
    return EmailTemplate.objects.get_or_create(
        name="t", defaults={"subject": "Hi", "html": "<p>hi</p>", "text": "hi"}
    )[0]


def _customer(n: int, **lifetime) -> Customer:
    return Customer.objects.create(external_id=f"c{n}", email=f"c{n}@example.com", **lifetime)


def _order(customer, key, at, lines, status=Order.Status.PLACED) -> Order:
    total = sum(Decimal(price) for _, price in lines)
    order = Order.objects.create(external_id=key, customer=customer, placed_at=at, total=total, status=status)
    for i, (product, price) in enumerate(lines, start=1):
        OrderLine.objects.create(order=order, line_no=i, product=product, quantity=1, unit_price=price)
    return order


@pytest.fixture(autouse=True)
def _fresh_cache():
    cache.clear()  # reports are cached by campaign id, and ids are reused between tests
    yield
    cache.clear()


@pytest.fixture
def shop(db):
    return _shop_build()


def _shop_build():
    """18 planned messages: 10 sent, 4 holdout, 2 suppressed, 1 capped, 1 failed."""
    campaign = Campaign.objects.create(name="Autumn", template=_template())
    p1, p2, p3 = (Product.objects.create(sku=f"P{i}", name=f"Product {i}") for i in (1, 2, 3))
    version = ModelVersion.objects.create(algorithm="lgbm", artefact="m.joblib")
    active = T0 - 10 * DAY
    stale = T0 - 400 * DAY
    cust = {}
    for n in range(1, 11):  # recipients: 2 orders and 100 spent each; c1-c5 and c9 ordered this year
        last = active if n in (1, 2, 3, 5, 9) else stale
        if n == 4:
            last = T0 + 30 * DAY  # the latest order in the data: "now" for CLV
        cust[n] = _customer(
            n, orders_count=2, total_spent=Decimal(100), first_order_at=T0 - 800 * DAY, last_order_at=last
        )
    for n in range(11, 19):
        cust[n] = _customer(n)
    msg = {}
    for n in range(1, 11):
        msg[n] = Message.objects.create(campaign=campaign, customer=cust[n], status="sent", sent_at=T0)
        Offer.objects.create(message=msg[n], product=p1, rank=1, score=0.9, reason="r", model_version=version)
        Offer.objects.create(message=msg[n], product=p2, rank=2, score=0.5, reason="r", model_version=version)
    for n in range(11, 15):
        msg[n] = Message.objects.create(campaign=campaign, customer=cust[n], status="holdout")
    Message.objects.filter(status="holdout").update(created_at=T0)
    Message.objects.create(campaign=campaign, customer=cust[15], status="skipped", skip_reason="suppressed")
    Message.objects.create(campaign=campaign, customer=cust[16], status="skipped", skip_reason="suppressed")
    Message.objects.create(campaign=campaign, customer=cust[17], status="skipped", skip_reason="capped")
    Message.objects.create(campaign=campaign, customer=cust[18], status="failed")

    def event(n, kind, machine=False, offer=None, day=1):
        Event.objects.create(
            kind=kind,
            message=msg[n],
            customer=cust[n],
            offer=offer,
            occurred_at=T0 + day * DAY,
            is_machine=machine,
        )

    event(1, "bounce", day=0)
    for n in (2, 3):
        event(n, "open")
        event(n, "click")
        event(n, "accept", offer=msg[n].offers.get(product=p1))
    event(2, "open", day=2)  # a second open of the same message counts once
    event(4, "open")
    event(5, "open", machine=True)
    event(5, "click", machine=True)
    event(6, "click")  # a human click without a tracked open: opened too
    event(7, "open")
    event(7, "unsubscribe")
    event(8, "complaint")

    o1 = _order(cust[2], "O1", T0 + 2 * DAY, [(p1, "30"), (p2, "20"), (p3, "10")])
    o2 = _order(cust[3], "O2", T0 + 3 * DAY, [(p1, "40")])
    o9 = _order(cust[9], "O9", T0 + 1 * DAY, [(p2, "10")])
    _order(cust[4], "O4", T0 + 30 * DAY, [(p1, "999")])  # after the 14-day window
    _order(cust[5], "O5", T0 - 1 * DAY, [(p1, "500")])  # before the email
    _order(cust[6], "O6", T0 + 1 * DAY, [(p1, "77")], status=Order.Status.CANCELLED)
    oh = _order(cust[11], "OH", T0 + 4 * DAY, [(p1, "15"), (p3, "10")])
    for n in (2, 3, 6, 7, 8, 11):  # the shop's churn cohort: ordered in the year before last
        _order(cust[n], f"P{n}", T0 - 400 * DAY, [(p3, "5")])

    def conversion(n, order, product, revenue, holdout=False):
        offer = None if holdout else msg[n].offers.get(product=product)
        Conversion.objects.create(
            message=msg[n],
            offer=offer,
            order=order,
            product=product,
            revenue=Decimal(revenue),
            is_holdout=holdout,
        )

    conversion(2, o1, p1, "30")
    conversion(2, o1, p2, "20")
    conversion(3, o2, p1, "40")
    conversion(9, o9, p2, "10")
    conversion(11, oh, p1, "15", holdout=True)
    conversion(11, oh, p3, "10", holdout=True)
    return {"campaign": campaign, "customers": cust, "messages": msg, "p1": p1, "p2": p2, "version": version}


def test_funnel_counts_and_rates(shop):
    report = campaign_report(campaign=shop["campaign"])
    c = report["counts"]
    assert (c["audience"], c["holdout"], c["suppressed"], c["capped"], c["failed"]) == (18, 4, 2, 1, 1)
    assert c["sent"] == 10
    assert c["bounced"] == 1
    assert c["delivered"] == 9 and c["delivered_source"] == "sent minus bounced"
    assert c["opened"] == 5  # messages 2, 3, 4, 6 (click), 7; not 5 (machine)
    assert c["clicked"] == 3  # 2, 3, 6
    assert c["accepted"] == 2
    assert c["converted"] == 3  # 2, 3, 9
    assert c["holdout_converted"] == 1
    assert (c["unsubscribed"], c["complained"]) == (1, 1)
    r = report["rates"]
    assert r["open_rate"] == pytest.approx(5 / 9)
    assert r["click_rate"] == pytest.approx(3 / 9)
    assert r["acceptance_rate"] == pytest.approx(2 / 9)
    assert r["conversion_rate"] == pytest.approx(3 / 9)
    assert r["unsubscribe_rate"] == pytest.approx(1 / 9)
    assert r["complaint_rate"] == pytest.approx(1 / 9)
    assert report["simulated"] is False


def test_delivered_events_take_precedence(shop):
    msg, cust = shop["messages"], shop["customers"]
    for n in (1, 2, 3):  # message 1 also bounced: not delivered
        Event.objects.create(kind="delivered", message=msg[n], customer=cust[n], occurred_at=T0)
    c = campaign_report(campaign=shop["campaign"])["counts"]
    assert c["delivered"] == 2 and c["delivered_source"] == "ESP delivered events"


def test_revenue_orders_and_clv(shop):
    report = campaign_report(campaign=shop["campaign"])
    assert report["revenue"] == pytest.approx(100.0)
    assert report["revenue_per_recipient"] == pytest.approx(10.0)
    assert report["holdout_revenue"] == pytest.approx(25.0)
    assert report["revenue_per_holdout"] == pytest.approx(6.25)
    assert report["recipient_conversion_rate"] == pytest.approx(0.3)  # c2, c3, c9 bought in the window
    assert report["holdout_conversion_rate"] == pytest.approx(0.25)  # c11
    assert report["recipient_window_revenue_per_member"] == pytest.approx(11.0)  # 110 / 10, not only offers
    assert report["window"]["holdout"] == {"members": 4, "buyers": 1, "revenue": 25.0, "revenue_sq": 625.0}
    rec, hold = report["orders"]["recipients"], report["orders"]["holdout"]
    # Window orders: O1 (60, 3 products), O2 (40, 1), O9 (10, 1); O4 late, O5 early, O6 cancelled.
    assert rec["orders"] == 3
    assert rec["aov"] == pytest.approx(110 / 3)
    assert rec["cross_sell_ratio"] == pytest.approx(5 / 3 - 1)
    assert (hold["orders"], hold["aov"], hold["cross_sell_ratio"]) == (
        1,
        pytest.approx(25.0),
        pytest.approx(1.0),
    )
    clv = report["clv"]
    assert clv["customers"] == 10
    assert clv["historical"] == pytest.approx(100.0)
    assert clv["aov"] == pytest.approx(50.0)
    # The shop's churn: of c2, c3, c6, c7, c8 and c11 (the holdout's c11 too: every customer), who
    # ordered in the year before last, c6, c7 and c8 placed nothing since.
    assert (clv["annual_churn"], clv["churn_cohort"]) == (pytest.approx(0.5), 6)
    assert clv["expected_lifetime_years"] == pytest.approx(2.0)
    # Orders in the year before "now" (T0 + 30 days): O1, O2, O9, O4, O5 → 5 orders / 6 active customers.
    assert clv["purchases_per_year"] == pytest.approx(5 / 6)
    assert clv["predictive"] == pytest.approx(50 * 5 / 6 * 2.0)


def test_clv_of_recent_buyers_uses_the_shops_churn_not_theirs(shop):
    """A post-purchase audience has bought in the last year by construction: its own churn is 0, which
    gave every such campaign the 10-year cap as its customers' lifetime."""
    from campaigns.reports import lifetime_value

    recent = Customer.objects.filter(external_id__in=["c2", "c3"])
    clv = lifetime_value(customers=recent)
    assert clv["customers"] == 2 and clv["annual_churn"] == pytest.approx(0.5)
    assert clv["expected_lifetime_years"] == pytest.approx(2.0)
    Order.objects.filter(placed_at__lt=T0 - 300 * DAY).delete()
    cache.clear()
    young = lifetime_value(customers=recent)  # no customer ordered a year before: nothing to predict from
    assert young["annual_churn"] is None and young["predictive"] is None


def test_uplift_small_groups_not_significant(shop):
    report = campaign_report(campaign=shop["campaign"])
    u = report["uplift_conversion"]
    se = math.sqrt(0.3 * 0.7 / 10 + 0.25 * 0.75 / 4)
    assert u["diff"] == pytest.approx(0.05)
    assert (u["low"], u["high"]) == (pytest.approx(0.05 - 1.959964 * se), pytest.approx(0.05 + 1.959964 * se))
    assert u["verdict"] == "not significant yet" and "Wald" in u["method"]
    assert u["relative"] == pytest.approx(0.05 / 0.25)  # against the holdout's rate
    assert uplift_proportion(x1=1, n1=10, x2=0, n2=0)["relative"] is None  # no holdout: nothing to compare
    assert uplift_mean(s1=1.0, ss1=1.0, n1=1, s2=0.0, ss2=0.0, n2=0)["relative"] is None
    # Any purchase in the window, both groups alike: O1 60, O2 40, O9 10 for recipients; OH 25 for holdout.
    recipients = [60, 40, 10] + [0] * 7
    holdout = [25, 0, 0, 0]
    va, vb = statistics.variance(recipients) / 10, statistics.variance(holdout) / 4
    df = (va + vb) ** 2 / (va**2 / 9 + vb**2 / 3)
    half = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    m = report["uplift_revenue"]
    assert m["diff"] == pytest.approx(11 - 6.25)
    assert (m["low"], m["high"]) == (pytest.approx(4.75 - half), pytest.approx(4.75 + half))
    assert m["verdict"] == "not significant yet" and "Welch" in m["method"]
    assert m["relative"] == pytest.approx(4.75 / 6.25)


def test_uplift_significant_with_large_groups():
    u = uplift_proportion(x1=30, n1=100, x2=5, n2=100)
    se = math.sqrt(0.3 * 0.7 / 100 + 0.05 * 0.95 / 100)
    assert (u["low"], u["high"]) == (pytest.approx(0.25 - 1.959964 * se), pytest.approx(0.25 + 1.959964 * se))
    assert u["significant"] and u["verdict"] == "significant at 95%"
    # Same difference, interval crossing 0 → not significant.
    assert not uplift_proportion(x1=6, n1=40, x2=4, n2=40)["significant"]
    # 25 of 50 recipients spent 20, no holdout member spent anything.
    m = uplift_mean(s1=500.0, ss1=25 * 400.0, n1=50, s2=0.0, ss2=0.0, n2=50)
    half = stats.t.ppf(0.975, 49) * math.sqrt(statistics.variance([20] * 25 + [0] * 25) / 50)
    assert (m["low"], m["high"]) == (pytest.approx(10 - half), pytest.approx(10 + half))
    assert m["significant"]


def test_top_products_with_model_version(shop):
    top = campaign_report(campaign=shop["campaign"])["top_products"]
    assert [p["sku"] for p in top] == ["P1", "P2"]
    p1, p2 = top
    assert (p1["offered"], p1["accepted"], p1["converted"], p1["revenue"]) == (10, 2, 2, 70.0)
    assert (p2["offered"], p2["accepted"], p2["converted"], p2["revenue"]) == (10, 0, 2, 30.0)
    assert p1["model_version"] == shop["version"].pk
    assert p1["acceptance_rate"] == pytest.approx(0.2)


def test_daily_series(shop):
    daily = campaign_report(campaign=shop["campaign"])["daily"]
    day0, day1 = T0.date().isoformat(), (T0 + DAY).date().isoformat()
    assert daily["days"][:2] == [day0, day1]
    assert daily["sent"][0] == 10
    i = daily["days"].index(day1)
    assert (daily["opens"][i], daily["clicks"][i], daily["accepts"][i]) == (5, 3, 2)  # first by people
    assert sum(daily["conversions"]) == 3
    # Every day between the first and the last, those with nothing at 0: the chart's axis is a list.
    from campaigns.reports.service import daily_series

    gap = daily_series(
        messages={"sent_by_day": {"2026-01-10": 4}},
        events={"opens_by_day": {"2026-01-13": 1}, "clicks_by_day": {}, "accepts_by_day": {}},
        conversions={"conversions_by_day": {}},
    )
    assert gap["days"] == ["2026-01-10", "2026-01-11", "2026-01-12", "2026-01-13"]
    assert (gap["sent"], gap["opens"]) == ([4, 0, 0, 0], [0, 0, 0, 1])


def test_report_page_renders_with_charts(shop, admin_client):
    campaign = shop["campaign"]
    response = admin_client.get(reverse("admin:campaigns_campaign_report", args=[campaign.pk]))
    assert response.status_code == 200
    html = response.content.decode()
    assert '<canvas id="chart-daily"' in html and '<canvas id="chart-funnel"' in html
    assert "vendor/chart.umd.min.js" in html
    assert "not significant yet" in html
    # A difference of rates is in percentage points (30% against 25%), with the relative change beside it.
    assert "+5.00 pp (+20% relative)" in html and "4.75 (+76% relative)" in html
    empty = Campaign.objects.create(name="Nobody yet", template=campaign.template, segment=campaign.segment)
    response = admin_client.get(reverse("admin:campaigns_campaign_report", args=[empty.pk]))
    assert response.status_code == 200  # no holdout, no recipients: no uplift to show, and no error
    assert "includes simulated demo events" not in html
    listing = admin_client.get(reverse("admin:campaigns_campaign_changelist")).content.decode()
    assert reverse("admin:campaigns_campaign_report", args=[campaign.pk]) in listing


def test_simulated_data_is_flagged_after_recompute(shop, admin_client):
    url = reverse("admin:campaigns_campaign_report", args=[shop["campaign"].pk])
    assert "includes simulated demo events" not in admin_client.get(url).content.decode()
    msg, cust = shop["messages"], shop["customers"]
    Event.objects.create(kind="open", message=msg[4], customer=cust[4], occurred_at=T0, is_simulated=True)
    # The page reuses its cached figures until asked to recompute.
    assert "includes simulated demo events" not in admin_client.get(url).content.decode()
    assert "includes simulated demo events" in admin_client.get(url + "?refresh=1").content.decode()


def test_csv_export(shop, admin_client):
    url = reverse("admin:campaigns_campaign_export", args=[shop["campaign"].pk])
    lines = b"".join(admin_client.get(url).streaming_content).decode().splitlines()
    assert lines[0].startswith("message_id,customer,run,status")
    assert len(lines) == 1 + 18
    offers = b"".join(admin_client.get(url + "?part=offers").streaming_content).decode().splitlines()
    assert len(offers) == 1 + 20
    assert sum(line.endswith(",True") for line in offers) == 2  # two accepted offers
    conv = admin_client.get(url + "?part=conversions")
    assert conv["Content-Type"].startswith("text/csv")
    rows = b"".join(conv.streaming_content).decode().splitlines()
    assert len(rows) == 1 + 6 and sum(",holdout," in r for r in rows) == 2


def test_overview_on_admin_index(shop, admin_client):
    Message.objects.update(created_at=dt.datetime.now(dt.UTC) - 5 * DAY)
    html = admin_client.get(reverse("admin:index")).content.decode()
    assert "Last 90 days across campaigns" in html
    assert '<canvas id="chart-daily"' in html
    assert "Autumn" in html
    # Kept a few minutes; "recompute now" shows what happened since.
    template, segment = Campaign.objects.values_list("template", "segment").first()
    later = Campaign.objects.create(name="Winter", template_id=template, segment_id=segment)
    Message.objects.filter(pk=Message.objects.first().pk).update(campaign=later)
    assert "Winter" not in admin_client.get(reverse("admin:index")).content.decode()
    assert 'href="?refresh=1">recompute now' in html
    assert "Winter" in admin_client.get(reverse("admin:index") + "?refresh=1").content.decode()


def test_customer_story(shop):
    story = customer_story(customer=shop["customers"][2])
    kinds = {item["kind"] for item in story}
    assert kinds == {"order", "email", "offer", "event", "conversion"}
    times = [item["at"] for item in story]
    assert times == sorted(times, reverse=True)
    assert len(customer_story(customer=shop["customers"][2], limit=3)) == 3
    events = [item for item in story if item["kind"] == "event"]
    name = shop["campaign"].name
    assert events and all(f"· {name}" in e["detail"] and "/campaigns/message/" in e["url"] for e in events)


def test_customer_page_shows_story(shop, admin_client):
    customer = shop["customers"][2]
    html = admin_client.get(reverse("admin:customers_customer_change", args=[customer.pk])).content.decode()
    assert "Customer story" in html and "Accepted offer" in html


@pytest.mark.django_db
def test_setup_roles_marketer_cannot_send(client):
    call_command("setup_roles")
    call_command("setup_roles")  # idempotent
    marketer = Group.objects.get(name="Marketer")
    sender = Group.objects.get(name="Campaign sender")
    user = User.objects.create_user("m", password="pw", is_staff=True)
    user.groups.add(marketer)
    assert user.has_perm("campaigns.change_emailtemplate")
    assert user.has_perm("campaigns.change_segment") and user.has_perm("campaigns.add_campaign")
    assert not user.has_perm("campaigns.send_campaign")
    assert not user.has_perm("campaigns.change_frequencypolicy")
    assert not user.has_perm("customers.delete_customer")
    campaign = Campaign.objects.create(name="Draft", template=_template())
    client.force_login(user)
    url = reverse("admin:campaigns_campaign_changelist")
    response = client.post(url, {"action": "start", "_selected_action": [campaign.pk]})
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.DRAFT
    assert response.status_code in (200, 302)
    assert 'value="start"' not in client.get(url).content.decode()
    user.groups.add(sender)
    assert User.objects.get(pk=user.pk).has_perm("campaigns.send_campaign")
    assert 'value="start"' in client.get(url).content.decode()


@pytest.mark.django_db
def test_send_action_is_logged(admin_client, settings):
    campaign = Campaign.objects.create(
        name="Later", template=_template(), send_at=dt.datetime.now(dt.UTC) + 3 * DAY
    )
    url = reverse("admin:campaigns_campaign_changelist")
    page = admin_client.post(url, {"action": "start", "_selected_action": [campaign.pk]})  # the dry run
    assert not LogEntry.objects.filter(object_id=str(campaign.pk)).exists()
    run = re.search(r'name="run" value="([^"]+)"', page.content.decode()).group(1)
    admin_client.post(
        url, {"action": "start", "_selected_action": [campaign.pk], "confirm": "yes", "run": run}
    )
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.SCHEDULED
    entry = LogEntry.objects.get(object_id=str(campaign.pk))
    assert "draft → scheduled" in entry.get_change_message()


def test_reports_refresh_recomputes_cached_figures(shop):
    campaign = shop["campaign"]
    Message.objects.update(created_at=dt.datetime.now(dt.UTC))
    assert campaign_report(campaign=campaign, cached=True)["counts"]["complained"] == 1
    msg, cust = shop["messages"], shop["customers"]
    Event.objects.create(kind="complaint", message=msg[9], customer=cust[9], occurred_at=T0)
    assert campaign_report(campaign=campaign, cached=True)["counts"]["complained"] == 1
    assert reports_refresh(days=30) == 1
    assert campaign_report(campaign=campaign, cached=True)["counts"]["complained"] == 2


@pytest.mark.django_db(transaction=True)
def test_report_on_two_connections_equals_the_one_connection_report(monkeypatch):
    """Outside a transaction, CLV and top products run on a second connection (same snapshot)."""
    from django.db import connection, transaction

    from campaigns.reports import queries

    snapshots = []
    on_snapshot = queries._on_snapshot
    monkeypatch.setattr(queries, "_on_snapshot", lambda s, fn: snapshots.append(s) or on_snapshot(s, fn))
    campaign = _shop_build()["campaign"]
    beside = campaign_report(campaign=campaign)  # the outermost transaction: two connections
    assert len(snapshots) == (connection.vendor == "postgresql")
    with transaction.atomic():
        inline = campaign_report(campaign=campaign)  # inside a caller's transaction: one
    assert len(snapshots) == (connection.vendor == "postgresql")
    for report in (beside, inline):
        report.pop("computed_at")
    assert beside == inline
    assert beside["clv"]["customers"] > 0 and beside["top_products"]


def test_an_acceptance_counts_as_an_open_and_a_click(shop):
    """A recipient who goes straight to an offer's accept link (an image-blocking client: no pixel) and
    accepts: the funnel must not read accepted 1, clicked 0, opened 0."""
    from campaigns.events import event_record

    msg = shop["messages"][9]  # sent, never opened or clicked
    before = campaign_report(campaign=shop["campaign"])["counts"]
    event_record(
        kind="accept",
        message_id=msg.pk,
        customer_id=msg.customer_id,
        offer_id=msg.offers.first().pk,
        occurred_at=T0 + 2 * DAY,
    )
    cache.clear()
    after = campaign_report(campaign=shop["campaign"])["counts"]
    assert [after[k] - before[k] for k in ("opened", "clicked", "accepted")] == [1, 1, 1]


def test_a_customer_held_out_twice_is_one_member_and_their_order_counts_once(shop):
    """Post-purchase campaigns hold out (or mail) a customer once per order: the uplift's groups are
    customers, and an order inside two of one customer's windows is one purchase."""
    cust11 = shop["customers"][11]
    second = Message.objects.create(campaign=shop["campaign"], customer=cust11, status="holdout")
    Message.objects.filter(pk=second.pk).update(created_at=T0 + 2 * DAY)  # OH, on day 4, is in both windows
    window = campaign_report(campaign=shop["campaign"])["window"]["holdout"]
    assert window == {"members": 4, "buyers": 1, "revenue": 25.0, "revenue_sq": 625.0}


def test_a_later_messages_trigger_order_is_not_a_purchase_in_an_earlier_window(shop):
    """Each message has its own window: a second post-purchase message's triggering order, two months
    after the first, is not a purchase after the first email (nor is the time between the windows)."""
    cust12 = shop["customers"][12]
    first = Message.objects.get(campaign=shop["campaign"], customer=cust12)  # held out at T0
    p1 = Product.objects.get(sku="P1")
    _order(cust12, "T2", T0 + 60 * DAY, [(p1, "80")])  # triggers the second message
    second = Message.objects.create(campaign=shop["campaign"], customer=cust12, status="holdout")
    Message.objects.filter(pk=second.pk).update(created_at=T0 + 60 * DAY + DAY)
    assert first.status == "holdout"
    window = campaign_report(campaign=shop["campaign"])["window"]["holdout"]
    assert window == {"members": 4, "buyers": 1, "revenue": 25.0, "revenue_sq": 625.0}
