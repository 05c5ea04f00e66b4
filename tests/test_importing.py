"""customers.importing: validation, all-or-nothing writes, idempotent re-import, real export quirks."""

import gzip
import io
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest
from django.core.management import CommandError, call_command

from customers.bulk import bulk_insert, copy_rows, with_defaults
from customers.importing import ImportFailed, customers_import, orders_import, products_import
from customers.models import Customer, Order, OrderLine, Product

pytestmark = pytest.mark.django_db

HEADER = (
    "order_id,customer_id,ordered_at,sku,product_name,category,quantity,unit_price,currency,email,country"
)
VALID = [
    "1001,c1,2024-01-05T10:00:00,MUG,Blue mug,Kitchen,2,3.50,GBP,Ann@Example.com,United Kingdom",
    "1001,c1,2024-01-05T10:00:00,TEA,Green tea,Food,1,4.00,GBP,ann@example.com,United Kingdom",
    "1002,c2,2024-01-06T11:30:00+01:00,MUG,Blue mug,Kitchen,1,3.50,GBP,bob@example.com,France",
    "1003,c1,2024-02-01T09:00:00Z,SPOON,Spoon,Kitchen,4,1.25,GBP,,",
]


def write_csv(path: Path, lines: list[str], header: str = HEADER) -> Path:
    text = "\n".join([header, *lines]) + "\n"
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def row_counts() -> tuple[int, int, int, int]:
    return (
        Customer.objects.count(),
        Product.objects.count(),
        Order.objects.count(),
        OrderLine.objects.count(),
    )


# ------------------------------------------------------------------------------------------ valid files


@pytest.mark.parametrize("filename", ["orders.csv", "orders.csv.gz"])
def test_valid_file_is_imported(tmp_path, filename):
    summary = orders_import(path=write_csv(tmp_path / filename, VALID))

    assert summary.counts["rows_read"] == 4
    assert summary.counts["customers_created"] == 2
    assert summary.counts["products_created"] == 3
    assert summary.counts["orders_created"] == 3
    assert summary.counts["order_lines_written"] == 4
    assert summary.error_count == 0
    assert row_counts() == (2, 3, 3, 4)

    order = Order.objects.get(external_id="1001")
    assert order.total == Decimal("11.00")
    assert order.status == Order.Status.PLACED
    assert order.currency == "GBP"
    assert [(line.line_no, line.product.sku, line.quantity) for line in order.lines.order_by("line_no")] == [
        (1, "MUG", 2),
        (2, "TEA", 1),
    ]
    assert Order.objects.get(external_id="1002").placed_at == datetime(2024, 1, 6, 10, 30, tzinfo=UTC)

    ann = Customer.objects.get(external_id="c1")
    assert ann.email == "ann@example.com"
    assert ann.country == "United Kingdom"
    assert ann.marketing_consent is False
    assert (ann.orders_count, ann.total_spent) == (2, Decimal("16.00"))
    assert ann.first_order_at == datetime(2024, 1, 5, 10, 0, tzinfo=UTC)
    assert ann.last_order_at == datetime(2024, 2, 1, 9, 0, tzinfo=UTC)

    mug = Product.objects.get(sku="MUG")
    assert (mug.name, mug.category, mug.price, mug.currency) == (
        "Blue mug",
        "Kitchen",
        Decimal("3.50"),
        "GBP",
    )


def test_columns_may_come_in_any_order_with_blanks_around_values(tmp_path):
    header = "sku , quantity,unit_price,order_id,customer_id,ordered_at,product_name,category"
    path = write_csv(tmp_path / "o.csv", [" MUG , 2 ,3.5, 7 , c9 ,2024-03-01T08:00:00, Mug ,"], header=header)

    orders_import(path=path)

    line = OrderLine.objects.select_related("order__customer", "product").get()
    assert (line.order.external_id, line.order.customer.external_id, line.product.sku) == ("7", "c9", "MUG")
    assert (line.quantity, line.unit_price, line.product.name) == (2, Decimal("3.50"), "Mug")


def test_header_only_file_writes_nothing(tmp_path):
    summary = orders_import(path=write_csv(tmp_path / "o.csv", []))

    assert summary.counts["rows_read"] == 0
    assert row_counts() == (0, 0, 0, 0)


def test_orders_update_known_customers_and_only_fill_blanks_in_known_products(tmp_path):
    Customer.objects.create(external_id="c1", email="old@example.com", first_name="Ann", country="Ireland")
    Product.objects.create(sku="MUG", name="Catalogue mug", active=False)

    summary = orders_import(path=write_csv(tmp_path / "orders.csv", VALID))

    assert summary.counts["customers_updated"] == 1
    ann = Customer.objects.get(external_id="c1")
    assert (ann.email, ann.first_name, ann.country) == ("ann@example.com", "Ann", "United Kingdom")
    mug = Product.objects.get(sku="MUG")
    assert (mug.name, mug.category, mug.price, mug.active) == (
        "Catalogue mug",
        "Kitchen",
        Decimal("3.50"),
        False,
    )


# ---------------------------------------------------------------------------------------- invalid files


@pytest.fixture
def existing_customer():
    return Customer.objects.create(external_id="c1", email="old@example.com", country="Ireland")


@pytest.mark.parametrize(
    ("bad_line", "column", "reason"),
    [
        (
            "1004,c2,yesterday,MUG,Blue mug,,1,3.50,GBP,,",
            "ordered_at",
            "'yesterday' is not an ISO 8601 date-time",
        ),
        (
            "1004,c2,2031-01-01T10:00:00Z,MUG,Blue mug,,1,3.50,GBP,,",
            "ordered_at",
            "'2031-01-01T10:00:00Z' is in the future",
        ),
        ("1004,c2,2024-01-07T10:00:00,MUG,Blue mug,,two,3.50,GBP,,", "quantity", "'two' is not a non-zero"),
        ("1004,c2,2024-01-07T10:00:00,MUG,Blue mug,,1.5,3.50,GBP,,", "quantity", "'1.5' is not a non-zero"),
        ("1004,c2,2024-01-07T10:00:00,MUG,Blue mug,,0,3.50,GBP,,", "quantity", "'0' is not a non-zero"),
        ("1004,c2,2024-01-07T10:00:00,,Blue mug,,1,3.50,GBP,,", "sku", "is empty"),
        ("1004,c2,2024-01-07T10:00:00,MUG,Blue mug,,1,£3,GBP,,", "unit_price", "'£3' is not a number"),
        (
            "1004,c2,2024-01-07T10:00:00,MUG,Blue mug,,1,3.50,GBP,not-an-email,",
            "email",
            "'not-an-email' is not an email address",
        ),
        ("1004,c2,2024-01-07T10:00:00", "sku", "is empty"),
    ],
)
def test_invalid_row_refuses_the_whole_file(tmp_path, existing_customer, bad_line, column, reason):
    path = write_csv(tmp_path / "orders.csv", [*VALID[:2], bad_line, *VALID[2:]])

    with pytest.raises(ImportFailed) as failure:
        orders_import(path=path)

    assert f"orders.csv, line 4, column {column}: {reason}" in str(failure.value)
    assert "nothing was written" in str(failure.value)
    assert any(e.line == 4 and e.column == column for e in failure.value.errors)
    assert row_counts() == (1, 0, 0, 0)
    existing_customer.refresh_from_db()
    assert (existing_customer.email, existing_customer.country) == ("old@example.com", "Ireland")


def test_every_invalid_row_is_reported(tmp_path):
    path = write_csv(
        tmp_path / "orders.csv",
        [
            VALID[0],
            "1004,c2,2024-13-45T10:00:00,MUG,Blue mug,,1,3.50,GBP,,",
            VALID[1],
            "1005,c2,2024-01-07T10:00:00,MUG,Blue mug,,x,y,GBP,,",
        ],
    )

    with pytest.raises(ImportFailed) as failure:
        orders_import(path=path)

    found = [(e.file, e.line, e.column) for e in failure.value.errors]
    assert found == [  # line by line, though they are found column by column
        ("orders.csv", 3, "ordered_at"),
        ("orders.csv", 5, "quantity"),
        ("orders.csv", 5, "unit_price"),
    ]
    assert failure.value.total == 3


def test_blank_lines_do_not_shift_reported_line_numbers(tmp_path):
    path = tmp_path / "orders.csv"
    path.write_text(f"{HEADER}\n{VALID[0]}\n\n{VALID[1]}\n1004,c2,2024-01-07,MUG,,,oops,1,,,\n")

    with pytest.raises(ImportFailed) as failure:
        orders_import(path=path)

    assert [(e.line, e.column) for e in failure.value.errors] == [(5, "quantity")]


def test_missing_required_column_is_reported_from_the_header(tmp_path, existing_customer):
    header = "order_id,customer_id,ordered_at,sku,product_name,category,unit_price"
    path = write_csv(tmp_path / "orders.csv", ["1,c1,2024-01-05T10:00:00,MUG,Mug,,3.50"], header=header)

    with pytest.raises(ImportFailed) as failure:
        orders_import(path=path)

    assert "orders.csv, line 1, column quantity: required column is missing" in str(failure.value)
    assert row_counts() == (1, 0, 0, 0)


def test_unreadable_files_are_refused(tmp_path):
    with pytest.raises(ImportFailed, match="file not found"):
        orders_import(path=tmp_path / "absent.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ImportFailed, match="empty"):
        orders_import(path=tmp_path / "empty.csv")
    (tmp_path / "broken.csv.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ImportFailed, match="cannot be read"):
        orders_import(path=tmp_path / "broken.csv.gz")
    assert row_counts() == (0, 0, 0, 0)


@pytest.mark.parametrize("line", [2, 3])
def test_a_line_with_a_field_too_many_is_refused_with_its_line(tmp_path, line):
    # A decimal comma: pandas reads a first data line like this as an index column, a later one as an error.
    decimal_comma = "1004,c3,2024-01-05T10:00:00,MUG,Blue mug,Kitchen,2,3,50,GBP,c@example.com,France"
    rows = [VALID[0], VALID[1]]
    rows.insert(line - 2, decimal_comma)
    with pytest.raises(ImportFailed) as failed:
        orders_import(path=write_csv(tmp_path / "comma.csv", rows))
    (error,) = failed.value.errors
    assert (error.file, error.line) == ("comma.csv", line)
    assert "expected 11 fields, saw 12" in error.reason
    assert row_counts() == (0, 0, 0, 0)


def test_an_order_cannot_belong_to_two_customers(tmp_path):
    path = write_csv(tmp_path / "orders.csv", [VALID[0], VALID[1].replace(",c1,", ",c2,")])

    with pytest.raises(ImportFailed, match=r"line 3, column customer_id: order 1001 already belongs to"):
        orders_import(path=path)
    assert row_counts() == (0, 0, 0, 0)


def test_skip_invalid_writes_the_valid_rows_and_reports_the_rest(tmp_path):
    bad = "1004,c3,2024-01-07T10:00:00,MUG,Blue mug,,1,abc,GBP,,"
    path = write_csv(tmp_path / "orders.csv", [*VALID, bad])

    summary = orders_import(path=path, skip_invalid=True)

    assert summary.error_count == 1
    assert [(e.line, e.column) for e in summary.errors] == [(6, "unit_price")]
    assert summary.as_dict()["invalid"] == 1
    assert "errors (their rows skipped): 1" in summary.lines()
    assert row_counts() == (2, 3, 3, 4)
    assert not Order.objects.filter(external_id="1004").exists()


# ------------------------------------------------------------------------------------------ re-imports


def test_reimporting_the_same_file_changes_nothing(tmp_path):
    path = write_csv(tmp_path / "orders.csv.gz", VALID)
    orders_import(path=path)
    before = row_counts()
    line_ids = sorted(OrderLine.objects.values_list("pk", flat=True))
    stats = list(Customer.objects.order_by("pk").values_list("orders_count", "total_spent", "last_order_at"))

    summary = orders_import(path=path)

    assert summary.counts["orders_unchanged"] == 3
    assert summary.counts["orders_created"] == summary.counts["orders_updated"] == 0
    assert summary.counts["order_lines_written"] == 0
    assert summary.counts["customers_created"] == summary.counts["products_created"] == 0
    assert summary.counts["customers_updated"] == summary.counts["products_updated"] == 0
    assert row_counts() == before
    assert sorted(OrderLine.objects.values_list("pk", flat=True)) == line_ids
    assert (
        list(Customer.objects.order_by("pk").values_list("orders_count", "total_spent", "last_order_at"))
        == stats
    )


def test_a_later_file_replaces_an_overlapping_order(tmp_path):
    orders_import(path=write_csv(tmp_path / "january.csv", VALID))
    later = [
        VALID[2],  # unchanged
        "1001,c1,2024-01-05T10:00:00,TEA,Green tea,Food,3,4.00,GBP,,",  # was two lines: now one
        "1005,c1,2024-03-01T10:00:00,SPOON,Spoon,Kitchen,1,1.25,GBP,,",  # new
    ]

    summary = orders_import(path=write_csv(tmp_path / "february.csv", later))

    assert summary.counts["orders_unchanged"] == 1
    assert summary.counts["orders_updated"] == 1
    assert summary.counts["orders_created"] == 1
    order = Order.objects.get(external_id="1001")
    assert list(order.lines.values_list("line_no", "product__sku", "quantity")) == [(1, "TEA", 3)]
    assert order.total == Decimal("12.00")
    ann = Customer.objects.get(external_id="c1")
    assert ann.orders_count == 3  # 1001, 1003 and 1005
    assert ann.total_spent == Decimal("12.00") + Decimal("5.00") + Decimal("1.25")
    assert ann.last_order_at == datetime(2024, 3, 1, 10, 0, tzinfo=UTC)
    assert row_counts() == (2, 3, 4, 4)


def test_an_order_moved_to_another_customer_refreshes_both(tmp_path):
    orders_import(path=write_csv(tmp_path / "a.csv", VALID))

    orders_import(
        path=write_csv(tmp_path / "b.csv", ["1002,c1,2024-01-06T10:30:00Z,MUG,Blue mug,,1,3.50,GBP,,"])
    )

    bob = Customer.objects.get(external_id="c2")
    assert (bob.orders_count, bob.total_spent, bob.last_order_at) == (0, 0, None)
    assert Customer.objects.get(external_id="c1").orders_count == 3


# ------------------------------------------------------------------------------- what real exports hold


def test_guests_returns_duplicates_zero_prices_and_empty_names(tmp_path):
    path = write_csv(
        tmp_path / "orders.csv",
        [
            VALID[0],
            VALID[0],  # exact duplicate
            "2001,,2024-01-08T10:00:00,MUG,Blue mug,,5,3.50,GBP,,",  # guest checkout
            "2001,,2024-01-08T10:00:00,TEA,Green tea,,1,4.00,GBP,,",  # guest checkout
            "C3001,c1,2024-01-09T10:00:00,MUG,Blue mug,,-1,3.50,GBP,,",  # cancellation
            "3002,c2,2024-01-10T10:00:00,MUG,Blue mug,,-2,3.50,GBP,,",  # return without a C
            "3003,c2,2024-01-11T10:00:00,GIFT,Free gift,,1,0.00,GBP,,",  # zero price
            "3003,c2,2024-01-11T10:00:00,NONAME,,,2,1.00,GBP,,",  # empty product name
            "3003,c2,2024-01-11T10:00:00,TEA,Green tea,,-1,4.00,GBP,,",  # stray negative in a purchase
            "3004,c2,2024-01-12T10:00:00,ADJ,Adjust bad debt,,1,-5.00,GBP,,",  # negative price
        ],
    )

    summary = orders_import(path=path)

    assert summary.skipped["guest checkout (no customer_id)"] == 2
    assert summary.skipped["exact duplicate line"] == 1
    assert summary.skipped["negative quantity inside a purchase order"] == 1
    assert summary.skipped["negative price (adjustment)"] == 1
    assert summary.counts["returns_recorded"] == 2
    assert not Order.objects.filter(external_id__in=["2001", "3004"]).exists()

    returned = Order.objects.filter(status=Order.Status.RETURNED).order_by("external_id")
    assert [o.external_id for o in returned] == ["3002", "C3001"]
    assert [o.lines.get().quantity for o in returned] == [2, 1]  # stored positive
    assert OrderLine.objects.filter(order__external_id="1001").count() == 1

    gift_order = Order.objects.get(external_id="3003")
    assert gift_order.status == Order.Status.PLACED
    assert list(gift_order.lines.values_list("product__sku", "quantity", "unit_price")) == [
        ("GIFT", 1, Decimal("0.00")),
        ("NONAME", 2, Decimal("1.00")),
    ]
    assert gift_order.total == Decimal("2.00")
    assert Product.objects.get(sku="NONAME").name == ""
    assert Product.objects.get(sku="GIFT").price is None  # a free line says nothing about the price

    # Returns are not purchases: lifetime figures count placed orders only.
    ann, bob = Customer.objects.get(external_id="c1"), Customer.objects.get(external_id="c2")
    assert (ann.orders_count, ann.total_spent) == (1, Decimal("7.00"))
    assert (bob.orders_count, bob.total_spent) == (1, Decimal("2.00"))


def test_summary_lines_name_every_count(tmp_path):
    summary = orders_import(path=write_csv(tmp_path / "orders.csv", [*VALID, VALID[0]]))

    lines = summary.lines()
    assert "orders created: 3" in lines
    assert "order lines written: 4" in lines
    assert "skipped (exact duplicate line): 1" in lines
    assert summary.as_dict()["counts"]["rows_read"] == 5


def test_orders_with_a_customers_file(tmp_path):
    customers = write_csv(
        tmp_path / "customers.csv.gz",
        ["c1,ann@example.com,United Kingdom,yes", "c7,eve@example.com,Spain,no"],
        header="customer_id,email,country,marketing_consent",
    )

    summary = orders_import(path=write_csv(tmp_path / "orders.csv.gz", VALID), customers_path=customers)

    assert summary.counts["customer_rows_read"] == 2
    assert Customer.objects.count() == 3
    ann = Customer.objects.get(external_id="c1")
    assert ann.marketing_consent is True
    assert ann.consent_at is not None
    assert ann.consent_source == "import orders.csv.gz"
    eve = Customer.objects.get(external_id="c7")
    assert (eve.marketing_consent, eve.consent_at, eve.orders_count) == (False, None, 0)


# ------------------------------------------------------------------------------------- customers files


CUSTOMER_HEADER = "customer_id,email,first_name,last_name,country,timezone,marketing_consent"


def test_customers_file_sets_consent_and_timezone(tmp_path):
    Customer.objects.create(external_id="c2", email="bob@example.com", marketing_consent=False)
    path = write_csv(
        tmp_path / "customers.csv",
        [
            "c1,Ann@Example.com,Ann,Lee,United Kingdom,Europe/London,yes",
            "c2,,,,,,Y",
            "c3,cy@example.com,Cy,,,,no",
            "c4,,,,,,",
        ],
        header=CUSTOMER_HEADER,
    )

    summary = customers_import(path=path)

    assert summary.counts["customers_created"] == 3
    assert summary.counts["customers_updated"] == 1
    ann = Customer.objects.get(external_id="c1")
    assert (ann.email, ann.full_name, ann.timezone, ann.marketing_consent) == (
        "ann@example.com",
        "Ann Lee",
        "Europe/London",
        True,
    )
    bob = Customer.objects.get(external_id="c2")
    assert bob.marketing_consent is True and bob.consent_at is not None
    assert bob.email == "bob@example.com"  # a blank field does not erase what is stored
    assert Customer.objects.get(external_id="c3").marketing_consent is False
    assert Customer.objects.get(external_id="c4").timezone == "UTC"


def test_customers_file_with_bad_values_is_refused(tmp_path):
    path = write_csv(
        tmp_path / "customers.csv",
        [
            "c1,ann@example.com,Ann,,,Europe/London,perhaps",
            "c2,bob@example.com,Bob,,,Mars/Olympus,yes",
            "c3,cy@example.com,Cy,,,,yes",
        ],
        header=CUSTOMER_HEADER,
    )

    with pytest.raises(ImportFailed) as failure:
        customers_import(path=path)

    message = str(failure.value)
    assert "customers.csv, line 2, column marketing_consent: 'perhaps' is not yes/no" in message
    assert "customers.csv, line 3, column timezone: 'Mars/Olympus' is not an IANA time zone" in message
    assert Customer.objects.count() == 0

    summary = customers_import(path=path, skip_invalid=True)
    assert summary.error_count == 2
    assert list(Customer.objects.values_list("external_id", flat=True)) == ["c3"]


# -------------------------------------------------------------------------------------- products files


PRODUCT_HEADER = "sku,name,category,price,active,repurchasable,product_url,complements"


def test_products_file_with_complements(tmp_path):
    path = write_csv(
        tmp_path / "products.csv",
        [
            "MUG,Blue mug,Kitchen,3.50,yes,no,https://shop.example/mug,TEA|SPOON",
            "TEA,Green tea,Food,4,yes,yes,,",
            "SPOON,Spoon,Kitchen,1.25,no,,,",
        ],
        header=PRODUCT_HEADER,
    )

    summary = products_import(path=path)

    assert summary.counts["products_created"] == 3
    assert summary.counts["complement_links"] == 2
    mug = Product.objects.get(sku="MUG")
    assert sorted(mug.complements.values_list("sku", flat=True)) == ["SPOON", "TEA"]
    assert list(Product.objects.get(sku="TEA").complement_of.values_list("sku", flat=True)) == ["MUG"]
    assert (mug.price, mug.product_url, mug.active) == (Decimal("3.50"), "https://shop.example/mug", True)
    assert Product.objects.get(sku="TEA").repurchasable is True
    assert Product.objects.get(sku="SPOON").active is False

    # A products file is the catalogue: it overwrites what orders guessed, and re-import is stable.
    products_import(
        path=write_csv(tmp_path / "p2.csv", ["MUG,Red mug,Kitchen,3.75,yes,no,,TEA"], PRODUCT_HEADER)
    )
    mug.refresh_from_db()
    assert (mug.name, mug.price) == ("Red mug", Decimal("3.75"))
    assert list(mug.complements.values_list("sku", flat=True)) == ["TEA"]


def test_products_file_with_unknown_complement_is_refused(tmp_path):
    path = write_csv(
        tmp_path / "products.csv",
        ["MUG,Blue mug,Kitchen,3.50,yes,no,,TEA|NOPE", "TEA,Green tea,Food,4,yes,yes,,"],
        header=PRODUCT_HEADER,
    )

    with pytest.raises(ImportFailed, match=r"products.csv, line 2, column complements: unknown sku 'NOPE'"):
        products_import(path=path)
    assert Product.objects.count() == 0

    summary = products_import(path=path, skip_invalid=True)
    assert summary.error_count == 1
    assert list(Product.objects.get(sku="MUG").complements.values_list("sku", flat=True)) == ["TEA"]


def test_products_file_with_bad_values_is_refused(tmp_path):
    path = write_csv(
        tmp_path / "products.csv",
        ["MUG,Blue mug,,-1,yes,no,,", "TEA,Tea,,4,maybe,no,,", "CUP,Cup,,2,yes,no,ftp://x,"],
        header=PRODUCT_HEADER,
    )

    with pytest.raises(ImportFailed) as failure:
        products_import(path=path)

    assert {(e.line, e.column) for e in failure.value.errors} == {
        (2, "price"),
        (3, "active"),
        (4, "product_url"),
    }
    assert Product.objects.count() == 0


def test_orders_with_a_products_file(tmp_path):
    products = write_csv(
        tmp_path / "products.csv", ["MUG,Catalogue mug,Kitchen,3.99,yes,no,,TEA"], header=PRODUCT_HEADER
    )

    orders_import(path=write_csv(tmp_path / "orders.csv", VALID), products_path=products)

    mug = Product.objects.get(sku="MUG")
    assert (mug.name, mug.price) == ("Catalogue mug", Decimal("3.99"))
    assert list(mug.complements.values_list("sku", flat=True)) == ["TEA"]
    assert Product.objects.get(sku="SPOON").name == "Spoon"


# ---------------------------------------------------------------------------------- management command


def test_import_orders_command_prints_the_summary(tmp_path):
    out = io.StringIO()

    call_command("import_orders", str(write_csv(tmp_path / "orders.csv.gz", VALID)), stdout=out, verbosity=0)

    printed = out.getvalue().splitlines()
    assert "orders created: 3" in printed
    assert "rows read: 4" in printed
    assert printed[-1] == "import finished"
    assert Order.objects.count() == 3


def test_import_orders_command_fails_on_an_invalid_file(tmp_path):
    path = write_csv(tmp_path / "orders.csv", [VALID[0], "1002,c2,2024-01-06,MUG,,,1,x,,,"])

    with pytest.raises(CommandError, match=r"orders.csv, line 3, column unit_price"):
        call_command("import_orders", str(path), stdout=io.StringIO(), verbosity=0)
    assert row_counts() == (0, 0, 0, 0)

    with pytest.raises(CommandError, match="no such file"):
        call_command("import_orders", str(tmp_path / "absent.csv"), verbosity=0)


def test_import_orders_command_skip_invalid(tmp_path):
    path = write_csv(tmp_path / "orders.csv", [VALID[0], "1002,c2,2024-01-06,MUG,,,1,x,,,"])
    out = io.StringIO()

    call_command("import_orders", str(path), "--skip-invalid", stdout=out, verbosity=0)

    assert "errors (their rows skipped): 1" in out.getvalue()
    assert Order.objects.count() == 1


# ------------------------------------------------------------------------------------- the real export


@pytest.mark.slow
def test_a_slice_of_the_real_export(tmp_path, online_retail_dir):
    with gzip.open(online_retail_dir / "orders.csv.gz", "rt", encoding="utf-8") as source:
        head = [next(source) for _ in range(30_000)]
    path = tmp_path / "orders_slice.csv.gz"
    with gzip.open(path, "wt", encoding="utf-8") as target:
        target.writelines(head)

    summary = orders_import(path=path)

    # The same figures computed independently from the slice.
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert summary.counts["rows_read"] == len(frame) == 29_999
    guests = frame["customer_id"] == ""
    known = frame.loc[~guests]
    duplicates = known.duplicated()
    kept = known.loc[~duplicates].copy()
    kept["quantity"] = kept["quantity"].astype(int)
    kept["amount"] = kept["quantity"] * kept["unit_price"].astype(float)
    is_return = kept["order_id"].str.startswith("C")
    purchases, returns = kept.loc[~is_return], kept.loc[is_return]
    assert guests.sum() > 0 and duplicates.sum() > 0 and len(returns) > 0  # the slice has every quirk
    assert (purchases["quantity"] > 0).all() and (returns["quantity"] < 0).all()

    assert summary.skipped["guest checkout (no customer_id)"] == guests.sum()
    assert summary.skipped["exact duplicate line"] == duplicates.sum()
    assert summary.counts["returns_recorded"] == returns["order_id"].nunique()
    assert summary.counts["order_lines_written"] == len(kept)
    assert Customer.objects.count() == kept["customer_id"].nunique()
    assert Product.objects.count() == kept["sku"].nunique()

    placed = Order.objects.filter(status=Order.Status.PLACED)
    returned = Order.objects.filter(status=Order.Status.RETURNED)
    assert placed.count() == purchases["order_id"].nunique()
    assert returned.count() == returns["order_id"].nunique()
    assert not returned.exclude(external_id__startswith="C").exists()
    assert OrderLine.objects.filter(order__status=Order.Status.PLACED).count() == len(purchases)
    assert OrderLine.objects.filter(order__status=Order.Status.RETURNED).count() == len(returns)

    revenue = purchases.groupby("customer_id")["amount"].sum().round(2)
    stored = dict(Customer.objects.values_list("external_id", "total_spent"))
    assert {c: float(stored[c]) for c in revenue.index} == pytest.approx(revenue.to_dict())
    orders_per_customer = purchases.groupby("customer_id")["order_id"].nunique()
    counts = dict(Customer.objects.values_list("external_id", "orders_count"))
    assert {c: counts[c] for c in orders_per_customer.index} == orders_per_customer.to_dict()

    again = orders_import(path=path)
    assert again.counts["orders_unchanged"] == Order.objects.count()
    assert again.counts["order_lines_written"] == 0


def test_a_bulk_insert_can_leave_out_the_rows_that_break_a_unique_constraint(db):
    Product.objects.create(sku="A", name="kept")
    frame = with_defaults(Product, pd.DataFrame({"sku": ["A", "B", "C"], "name": ["new", "b", "c"]}))
    assert bulk_insert(Product, frame, ignore_conflicts=True) == 2
    assert dict(Product.objects.values_list("sku", "name")) == {"A": "kept", "B": "b", "C": "c"}
    b = Product.objects.get(sku="B")
    assert (b.active, b.currency, b.price, b.units_sold) == (True, "", None, 0)  # defaults, a db_default
    assert bulk_insert(Product, frame, ignore_conflicts=True) == 0  # again: and no table left behind
    assert Product.objects.count() == 3


def test_defaults_are_not_given_for_a_field_whose_default_differs_per_row():
    from campaigns.models import Message

    with pytest.raises(ValueError, match="Message.token"):
        with_defaults(Message, pd.DataFrame({"customer_id": [1, 2]}))


def test_a_bulk_inserted_timestamp_is_found_by_an_equal_lookup(db):
    # SQLite compares timestamps as text: they must be written as the ORM writes them.
    whole, fraction = (
        datetime(2026, 11, 28, 10, 0, tzinfo=UTC),
        datetime(2026, 11, 28, 11, 0, 0, 5, tzinfo=UTC),
    )
    frame = pd.DataFrame(
        {"external_id": ["W", "F"], "last_order_at": pd.to_datetime([whole, fraction], utc=True)}
    )
    bulk_insert(Customer, with_defaults(Customer, frame))
    assert list(Customer.objects.filter(last_order_at__lte=whole).values_list("external_id", flat=True)) == [
        "W"
    ]
    assert Customer.objects.get(last_order_at=fraction).external_id == "F"


def test_copied_rows_keep_their_values_nulls_and_awkward_text(db):
    # COPY's escaping on PostgreSQL (CI runs the suite there), executemany on SQLite.
    from campaigns.models import TrackedLink
    from campaigns.sending.compose import LINK_COLUMNS

    from .campaign_fixtures import campaign, shop

    world = shop(recipients=1, history=0)
    c = campaign(template=world["template"], segment=world["segment"])
    message = c.messages.create(customer=world["recipients"][0])
    awkward = "https://shop.example/p?a=1&b=\\N\ttab\nline\\\\ 'q' \"d\" ö"
    copy_rows(
        TrackedLink,
        LINK_COLUMNS,
        [(message.pk, None, "t1", awkward, False), (message.pk, None, "t2", "", True)],
    )
    copy_rows(TrackedLink, LINK_COLUMNS, [])
    rows = list(
        TrackedLink.objects.order_by("token").values_list(*[c.removesuffix("_id") for c in LINK_COLUMNS])
    )
    assert rows == [(message.pk, None, "t1", awkward, False), (message.pk, None, "t2", "", True)]


def test_a_failing_receiver_of_imported_orders_does_not_fail_the_written_import(
    tmp_path, caplog, django_capture_on_commit_callbacks
):
    """With tasks run in-process (the demo), a receiver's error surfaced from the import after its
    commit: a written import was reported as failed with "nothing written"."""
    from customers.signals import orders_imported

    def broken(sender, order_ids, **kwargs):
        raise OverflowError("a campaign's bad settings")

    orders_imported.connect(broken, dispatch_uid="test-broken")
    try:
        with django_capture_on_commit_callbacks(execute=True):
            summary = orders_import(path=write_csv(tmp_path / "orders.csv", VALID))
    finally:
        orders_imported.disconnect(dispatch_uid="test-broken")
    assert summary.counts["orders_created"] == 3 and Order.objects.count() == 3
    assert "a campaign's bad settings" in caplog.text
