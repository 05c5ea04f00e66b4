"""The customers admin: search and filters, a customer's timeline, sales figures, order lines, uploads."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from customers.importing import product_stats_refresh
from customers.models import Customer, ImportRun, Order, OrderLine, Product
from xsell_crm.celery import app as celery_app

pytestmark = pytest.mark.django_db
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
HEADER = "order_id,customer_id,ordered_at,sku,product_name,category,quantity,unit_price\n"


def shop_create(*, n: int, start: int = 0) -> None:
    """n customers, each with one placed order of one line of their own product, in a few queries."""
    ids = range(start, start + n)
    customers = Customer.objects.bulk_create(
        Customer(
            external_id=f"c{i:04}", email=f"shopper{i}@example.com", first_name=f"Name{i}", country="Spain"
        )
        for i in ids
    )
    products = Product.objects.bulk_create(Product(sku=f"P{i:04}", name=f"Product {i}") for i in ids)
    orders = Order.objects.bulk_create(
        Order(external_id=f"o{i:04}", customer=c, placed_at=NOW, total=Decimal("2.00"))
        for i, c in zip(ids, customers, strict=True)
    )
    OrderLine.objects.bulk_create(
        OrderLine(order=o, line_no=1, product=p, quantity=1, unit_price=Decimal("2.00"))
        for o, p in zip(orders, products, strict=True)
    )


@pytest.fixture
def ann():
    customer = Customer.objects.create(
        external_id="A-1",
        email="ann@example.com",
        first_name="Ann",
        last_name="Lee",
        country="United Kingdom",
        marketing_consent=True,
        consent_at=NOW,
    )
    mug = Product.objects.create(sku="MUG", name="Blue mug", price=Decimal("3.50"))
    tea = Product.objects.create(sku="TEA", name="Green tea", price=Decimal("4.00"))
    first = Order.objects.create(external_id="1001", customer=customer, placed_at=NOW, total=Decimal("11.00"))
    OrderLine.objects.create(order=first, line_no=1, product=mug, quantity=2, unit_price=Decimal("3.50"))
    OrderLine.objects.create(order=first, line_no=2, product=tea, quantity=1, unit_price=Decimal("4.00"))
    second = Order.objects.create(
        external_id="1002", customer=customer, placed_at=NOW + timedelta(days=30), total=Decimal("7.00")
    )
    OrderLine.objects.create(order=second, line_no=1, product=mug, quantity=2, unit_price=Decimal("3.50"))
    returned = Order.objects.create(
        external_id="C1003",
        customer=customer,
        placed_at=NOW + timedelta(days=31),
        total=Decimal("3.50"),
        status=Order.Status.RETURNED,
    )
    OrderLine.objects.create(order=returned, line_no=1, product=mug, quantity=1, unit_price=Decimal("3.50"))
    customer.orders_count, customer.total_spent = 2, Decimal("18.00")
    customer.first_order_at, customer.last_order_at = first.placed_at, second.placed_at
    customer.save()
    product_stats_refresh()  # what every import does after writing orders
    return customer


@pytest.fixture
def others():
    Customer.objects.create(external_id="B-2", email="bob@example.com", first_name="Bob", country="France")
    Customer.objects.create(
        external_id="C-3",
        email="cy@example.com",
        first_name="Cy",
        country="France",
        suppressed_reason=Customer.Suppression.BOUNCED,
        suppressed_at=NOW,
    )
    Customer.objects.create(
        external_id="D-4",
        email="di@example.com",
        first_name="Di",
        country="Spain",
        suppressed_reason=Customer.Suppression.UNSUBSCRIBED,
        suppressed_at=NOW,
    )


def listed(admin_client, url_name: str, **params) -> list[str]:
    response = admin_client.get(reverse(url_name), params)
    assert response.status_code == 200
    return sorted(str(obj) for obj in response.context["cl"].result_list)


# ---------------------------------------------------------------------------------------------- customers


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, ["ann@example.com", "bob@example.com", "cy@example.com", "di@example.com"]),
        ({"q": "bob@example"}, ["bob@example.com"]),
        ({"q": "C-3"}, ["cy@example.com"]),  # the shop's customer id, exactly
        ({"q": "Lee"}, ["ann@example.com"]),
        ({"q": "ann"}, ["ann@example.com"]),
        ({"country__exact": "France"}, ["bob@example.com", "cy@example.com"]),
        ({"marketing_consent__exact": "1"}, ["ann@example.com"]),
        ({"marketing_consent__exact": "0"}, ["bob@example.com", "cy@example.com", "di@example.com"]),
        ({"suppressed": "no"}, ["ann@example.com", "bob@example.com"]),
        ({"suppressed": "yes"}, ["cy@example.com", "di@example.com"]),
        ({"suppressed": "bounced"}, ["cy@example.com"]),
        ({"suppressed": "yes", "country__exact": "Spain"}, ["di@example.com"]),
    ],
)
def test_customer_changelist_search_and_filters(admin_client, ann, others, params, expected):
    assert listed(admin_client, "admin:customers_customer_changelist", **params) == expected


def test_customer_changelist_shows_lifetime_columns(admin_client, ann):
    response = admin_client.get(reverse("admin:customers_customer_changelist"))

    content = response.content.decode()
    assert "Ann Lee" in content
    assert "18.00" in content
    assert "United Kingdom" in content


def test_customer_page_shows_timeline_and_lifetime_figures(admin_client, ann):
    response = admin_client.get(reverse("admin:customers_customer_change", args=[ann.pk]))

    assert response.status_code == 200
    content = response.content.decode()
    assert "Purchase timeline (latest 3)" in content
    assert "2 orders" in content
    assert "revenue 18.00" in content
    assert "average order value 9.00" in content
    assert "first purchase 1 May 2024, last 31 May 2024" in content
    assert "2 × Blue mug; 1 × Green tea" in content
    assert "Returned" in content
    # Newest first, each linking to its order.
    timeline = [o.external_id for o in response.context["timeline"]]
    assert timeline == ["C1003", "1002", "1001"]
    assert reverse("admin:customers_order_change", args=[Order.objects.get(external_id="1001").pk]) in content


def test_customer_page_without_orders(admin_client, others):
    bob = Customer.objects.get(external_id="B-2")

    response = admin_client.get(reverse("admin:customers_customer_change", args=[bob.pk]))

    assert response.status_code == 200
    assert "No orders yet." in response.content.decode()


def test_customer_page_query_count_does_not_grow_with_orders(
    admin_client, ann, django_assert_max_num_queries
):
    url = reverse("admin:customers_customer_change", args=[ann.pk])
    with CaptureQueriesContext(connection) as few:
        admin_client.get(url)
    mug = Product.objects.get(sku="MUG")
    for i in range(30):
        order = Order.objects.create(external_id=f"x{i}", customer=ann, placed_at=NOW, total=1)
        OrderLine.objects.create(order=order, line_no=1, product=mug, quantity=1, unit_price=1)
        OrderLine.objects.create(order=order, line_no=2, product=mug, quantity=1, unit_price=0)

    with django_assert_max_num_queries(len(few)):
        response = admin_client.get(url)
    assert len(response.context["timeline"]) == 33


def test_changing_consent_in_the_admin_records_when(admin_client, others):
    bob = Customer.objects.get(external_id="B-2")
    data = {
        "external_id": "B-2",
        "email": "bob@example.com",
        "first_name": "Bob",
        "last_name": "",
        "country": "France",
        "timezone": "Europe/Paris",
        "marketing_consent": "on",
        "suppressed_reason": "",
    }

    response = admin_client.post(reverse("admin:customers_customer_change", args=[bob.pk]), data)

    assert response.status_code == 302
    bob.refresh_from_db()
    assert bob.marketing_consent is True
    assert bob.consent_at is not None
    assert bob.consent_source.startswith("admin by ")
    page = admin_client.post(
        reverse("admin:customers_customer_change", args=[bob.pk]), {**data, "timezone": "Mars/Olympus"}
    ).content.decode()
    assert "is not an IANA time zone" in page  # sending would quietly use UTC
    bob.refresh_from_db()
    assert bob.timezone == "Europe/Paris"


# ----------------------------------------------------------------------------------- products and orders


def test_product_changelist_shows_units_sold_and_revenue(admin_client, ann):
    response = admin_client.get(reverse("admin:customers_product_changelist"))

    assert response.status_code == 200
    rows = {p.sku: (p.units_sold, p.revenue) for p in response.context["cl"].result_list}
    # The returned mug is not a sale.
    assert rows == {"MUG": (4, Decimal("14.00")), "TEA": (1, Decimal("4.00"))}
    content = response.content.decode()
    assert "Units sold" in content
    assert '<td class="field-units_sold">4</td>' in content
    assert '<td class="field-revenue">14.00</td>' in content


def test_a_product_can_be_added_and_then_shows_its_sales(admin_client):
    add = reverse("admin:customers_product_add")
    assert admin_client.get(add).status_code == 200
    response = admin_client.post(add, {"sku": "CASE", "name": "Case", "currency": "GBP", "active": "on"})
    assert response.status_code == 302, response.content.decode()[:2000]
    product = Product.objects.get(sku="CASE")
    page = admin_client.get(reverse("admin:customers_product_change", args=[product.pk])).content.decode()
    assert "Units sold" in page and "Revenue" in page


def test_product_changelist_sorts_by_revenue(admin_client, ann):
    response = admin_client.get(reverse("admin:customers_product_changelist"), {"o": "-8"})

    assert [p.sku for p in response.context["cl"].result_list] == ["MUG", "TEA"]


def test_order_page_shows_its_lines_inline(admin_client, ann):
    order = Order.objects.get(external_id="1001")

    response = admin_client.get(reverse("admin:customers_order_change", args=[order.pk]))

    assert response.status_code == 200
    formset = response.context["inline_admin_formsets"][0].formset
    assert [(f.instance.line_no, f.instance.product.sku, f.instance.quantity) for f in formset.forms] == [
        (1, "MUG", 2),
        (2, "TEA", 1),
    ]
    content = response.content.decode()
    assert 'name="lines-TOTAL_FORMS" value="2"' in content
    assert "Blue mug (MUG)" in content


def test_order_changelist_filters_returns(admin_client, ann):
    returned = listed(admin_client, "admin:customers_order_changelist", status__exact="returned")

    assert returned == ["order C1003"]


# --------------------------------------------------------------------------------------------- no N+1


@pytest.mark.parametrize(
    "url_name",
    [
        "admin:customers_customer_changelist",
        "admin:customers_product_changelist",
        "admin:customers_order_changelist",
    ],
)
def test_changelists_run_a_fixed_number_of_queries(admin_client, django_assert_max_num_queries, url_name):
    shop_create(n=5)
    url = reverse(url_name)
    admin_client.get(url)  # warm the session and content-type caches
    with CaptureQueriesContext(connection) as five:
        response = admin_client.get(url)
    assert len(response.context["cl"].result_list) == 5

    shop_create(n=55, start=5)
    with django_assert_max_num_queries(len(five)):
        response = admin_client.get(url)
    assert len(response.context["cl"].result_list) == min(60, response.context["cl"].list_per_page)


# -------------------------------------------------------------------------------------------- uploads


@pytest.fixture
def uploads(settings, tmp_path, monkeypatch):
    settings.MEDIA_ROOT = tmp_path / "media"
    # With a broker configured (REDIS_URL) tasks are queued; here the task must run in this process.
    monkeypatch.setitem(celery_app.conf, "task_always_eager", True)
    return tmp_path


def test_import_changelist_links_to_the_upload_form(admin_client):
    response = admin_client.get(reverse("admin:customers_importrun_changelist"))

    assert response.status_code == 200
    upload = reverse("admin:customers_importrun_upload")
    assert f'href="{upload}"' in response.content.decode()
    assert "Import a file" in response.content.decode()
    form = admin_client.get(upload)
    assert form.status_code == 200
    assert 'type="file"' in form.content.decode()


def test_uploading_a_valid_file_imports_it(admin_client, uploads, django_capture_on_commit_callbacks):
    orders = SimpleUploadedFile(
        "shop.csv",
        (
            HEADER
            + "1001,c1,2024-01-05T10:00:00,MUG,Blue mug,,2,3.50\n"
            + "1001,c1,2024-01-05T10:00:00,TEA,Green tea,,1,4.00\n"
            + "1002,,2024-01-05T11:00:00,MUG,Blue mug,,1,3.50\n"
        ).encode(),
    )

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(reverse("admin:customers_importrun_upload"), {"orders": orders})

    assert response.status_code == 302
    assert response.url == reverse("admin:customers_importrun_changelist")
    run = ImportRun.objects.get()
    assert run.status == ImportRun.Status.DONE
    assert run.filename == "shop.csv"
    assert run.rows_read == 3
    assert run.finished_at is not None
    assert run.summary["counts"]["orders_created"] == 1
    assert run.summary["counts"]["order_lines_written"] == 2
    assert run.summary["skipped"]["guest checkout (no customer_id)"] == 1
    assert run.errors == []
    assert Order.objects.get().total == Decimal("11.00")

    page = admin_client.get(reverse("admin:customers_importrun_change", args=[run.pk]))
    assert page.status_code == 200
    assert "orders_created" in page.content.decode()


def test_uploading_an_invalid_file_writes_nothing(admin_client, uploads, django_capture_on_commit_callbacks):
    orders = SimpleUploadedFile(
        "bad.csv",
        (
            HEADER
            + "1001,c1,2024-01-05T10:00:00,MUG,Blue mug,,2,3.50\n"
            + "1002,c1,not a date,MUG,Blue mug,,1,3.50\n"
        ).encode(),
    )

    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(reverse("admin:customers_importrun_upload"), {"orders": orders})

    run = ImportRun.objects.get()
    assert run.status == ImportRun.Status.FAILED
    assert run.summary["invalid"] == 1
    assert run.errors == ["bad.csv, line 3, column ordered_at: 'not a date' is not an ISO 8601 date-time"]
    assert Order.objects.count() == Customer.objects.count() == 0
    listing = admin_client.get(reverse("admin:customers_importrun_changelist")).content.decode()
    assert "Failed (nothing written)" in listing
    assert "bad.csv, line 3, column ordered_at: &#x27;not a date&#x27; is not an ISO 8601" in listing  # why
    page = admin_client.get(reverse("admin:customers_importrun_change", args=[run.pk])).content.decode()
    assert "<li>bad.csv, line 3, column ordered_at:" in page and 'name="_save"' not in page
    assert "orders: bad.csv" in page and str(settings.MEDIA_ROOT) not in page  # not where it was stored


def test_an_upload_that_fails_unexpectedly_is_marked_failed(
    admin_client, uploads, django_capture_on_commit_callbacks, monkeypatch
):
    import customers.tasks

    def broken(**kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(customers.tasks, "orders_import", broken)
    orders = SimpleUploadedFile(
        "ok.csv", (HEADER + "1001,c1,2024-01-05T10:00:00,MUG,Blue mug,,2,3.50\n").encode()
    )
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(reverse("admin:customers_importrun_upload"), {"orders": orders})
    assert response.status_code == 302
    run = ImportRun.objects.get()
    assert run.status == ImportRun.Status.FAILED and run.finished_at is not None
    assert run.errors == ["the import stopped on an unexpected error (KeyError: 'a bug')"]


def test_uploading_with_skip_invalid(admin_client, uploads, django_capture_on_commit_callbacks):
    orders = SimpleUploadedFile(
        "mixed.csv",
        (
            HEADER
            + "1001,c1,2024-01-05T10:00:00,MUG,Blue mug,,2,3.50\n"
            + "1002,c1,not a date,MUG,Blue mug,,1,3.50\n"
        ).encode(),
    )

    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(
            reverse("admin:customers_importrun_upload"), {"orders": orders, "skip_invalid": "on"}
        )

    run = ImportRun.objects.get()
    assert run.status == ImportRun.Status.DONE
    assert run.summary["invalid"] == 1
    assert run.errors == ["mixed.csv, line 3, column ordered_at: 'not a date' is not an ISO 8601 date-time"]
    assert list(Order.objects.values_list("external_id", flat=True)) == ["1001"]
    orders.seek(0)  # the same file again: stored apart from the first, still named as uploaded
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(
            reverse("admin:customers_importrun_upload"), {"orders": orders, "skip_invalid": "on"}
        )
    assert ImportRun.objects.latest("pk").errors == run.errors


def test_upload_needs_permission_to_add_orders(client, uploads):
    clerk = User.objects.create_user("clerk", password="x", is_staff=True)
    client.force_login(clerk)
    orders = SimpleUploadedFile("shop.csv", (HEADER + "1,c1,2024-01-05T10:00:00,MUG,,,1,1\n").encode())

    response = client.post(reverse("admin:customers_importrun_upload"), {"orders": orders})

    assert response.status_code == 302
    assert not ImportRun.objects.exists()
    assert not Order.objects.exists()
