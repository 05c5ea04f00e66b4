"""customers.privacy: export, erase, and an erased address stays unmailed after a re-import."""

import datetime as dt
import hashlib
import json
from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse
from django.utils import timezone

from campaigns.models import Event
from customers.importing import customers_import, orders_import
from customers.models import Customer, Order, OrderLine, SuppressedAddress
from customers.privacy import customer_erase, customer_export, suppressed_addresses_apply
from tests.test_tracking import sent_message

HEADER = "order_id,customer_id,ordered_at,sku,product_name,category,quantity,unit_price,email,first_name"


@pytest.fixture
def erased_setup():
    msg, offers = sent_message(email="Ann.Smith@Example.com")
    customer = msg.customer
    order = Order.objects.create(external_id="A1", customer=customer, placed_at=timezone.now())
    OrderLine.objects.create(
        order=order, line_no=1, product=offers[0].product, quantity=1, unit_price=Decimal("3")
    )
    Event.objects.create(
        kind="open",
        message=msg,
        customer=customer,
        occurred_at=timezone.now(),
        user_agent="Mozilla/5.0 Firefox",
        ip_hash="ab" * 32,
        meta={"x": 1},
    )
    return msg, customer


@pytest.mark.django_db
def test_export_holds_everything_as_json(erased_setup):
    msg, customer = erased_setup
    data = customer_export(customer=customer)
    json.dumps(data)  # JSON-safe
    assert data["customer"]["email"] == "Ann.Smith@Example.com"
    assert data["orders"][0]["order_id"] == "A1" and data["orders"][0]["lines"][0]["sku"] == "SKU1"
    assert data["messages"][0]["status"] == "sent"
    assert {o["product__sku"] for o in data["offers"]} == {"SKU1", "SKU2"}
    assert data["events"][0]["user_agent"] == "Mozilla/5.0 Firefox"


@pytest.mark.django_db
def test_erase_removes_personal_data_and_keeps_a_hash(erased_setup):
    msg, customer = erased_setup
    old_external_id = customer.external_id
    customer_erase(customer=customer)
    customer.refresh_from_db()
    assert (customer.email, customer.first_name, customer.last_name, customer.country) == ("", "", "", "")
    assert customer.external_id != old_external_id
    assert customer.suppressed_reason == "erased" and not customer.marketing_consent
    event = Event.objects.get(kind="open")
    assert (event.user_agent, event.ip_hash, event.meta) == ("", "", {})
    assert Order.objects.filter(customer=customer).count() == 1  # figures stay, anonymously
    digest = hashlib.sha256(b"ann.smith@example.com").hexdigest()
    assert SuppressedAddress.objects.get().email_hash == digest
    assert "ann" not in json.dumps(customer_export(customer=customer)).lower()


@pytest.mark.django_db
def test_erase_then_reimport_is_not_mailed(erased_setup, tmp_path):
    msg, customer = erased_setup
    customer_erase(customer=customer)
    placed = (timezone.now() - dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S")
    orders = tmp_path / "orders.csv"
    orders.write_text(
        f"{HEADER}\n"
        f"B1,{msg.customer.external_id},{placed},SKU9,Nine,,1,2.50,ANN.SMITH@example.com,Ann\n"
        f"B2,c-new-1,{placed},SKU9,Nine,,1,2.50,ann.smith@example.com,Ann\n"
        f"B3,c-other,{placed},SKU9,Nine,,1,2.50,bob@example.com,Bob\n"
    )
    orders_import(path=orders)
    people = tmp_path / "customers.csv"
    people.write_text(
        "customer_id,email,marketing_consent\n"
        "c-consenting,ann.smith@example.com,yes\n"
        "c-new-1,ann.smith@example.com,yes\n"
        "c-other,bob@example.com,yes\n"
    )
    customers_import(path=people)
    again = Customer.objects.filter(email__iexact="ann.smith@example.com")
    assert (
        again.count() == 3
    )  # c-<old id> (re-created, the erased row lost its shop id), c-new-1, c-consenting
    assert set(again.values_list("suppressed_reason", flat=True)) == {"erased"}
    assert not any(c.is_mailable for c in again)
    assert Customer.objects.get(external_id="c-other").is_mailable


@pytest.mark.django_db
def test_apply_keeps_an_earlier_reason_and_checks_only_given_ids():
    now = timezone.now()
    SuppressedAddress.objects.create(email_hash=hashlib.sha256(b"x@example.com").hexdigest(), reason="erased")
    unsub = Customer.objects.create(
        external_id="u", email="x@example.com", suppressed_reason="unsubscribed", suppressed_at=now
    )
    other = Customer.objects.create(external_id="o", email="x@example.com")
    assert suppressed_addresses_apply(customer_ids=[unsub.pk]) == 0
    assert suppressed_addresses_apply(customer_ids=[other.pk]) == 1
    assert Customer.objects.get(pk=unsub.pk).suppressed_reason == "unsubscribed"
    assert Customer.objects.get(pk=other.pk).suppressed_reason == "erased"


def _staff(*perms):
    user = User.objects.create_user("staff", password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=perms))
    return user


@pytest.mark.django_db
def test_admin_export_and_erase_actions(client, erased_setup):
    msg, customer = erased_setup
    changelist = reverse("admin:customers_customer_changelist")
    client.force_login(_staff("view_customer", "change_customer"))
    response = client.post(changelist, {"action": "privacy_export", "_selected_action": [customer.pk]})
    assert response["Content-Type"].startswith("application/json")
    assert json.loads(response.content)[0]["customer"]["email"] == "Ann.Smith@Example.com"
    # Without the delete permission the erase action is not offered.
    client.post(changelist, {"action": "privacy_erase", "_selected_action": [customer.pk], "confirm": "yes"})
    assert Customer.objects.get(pk=customer.pk).email

    client.force_login(User.objects.create_superuser("boss", password="pw"))
    page = client.post(changelist, {"action": "privacy_erase", "_selected_action": [customer.pk]})
    assert page.status_code == 200 and b'name="confirm"' in page.content
    assert Customer.objects.get(pk=customer.pk).email  # nothing erased before confirming
    client.post(changelist, {"action": "privacy_erase", "_selected_action": [customer.pk], "confirm": "yes"})
    assert Customer.objects.get(pk=customer.pk).suppressed_reason == "erased"
