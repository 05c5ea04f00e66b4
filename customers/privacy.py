"""A customer's data: export it (JSON) and erase it, from the admin.

Erasing removes the personal data (email, names, country, the shop's customer id, events' user agents
and network hashes, send errors that may quote the address) and keeps orders for the aggregate figures,
now tied to an anonymous row. The address survives only as sha256(lower-cased email) in
SuppressedAddress, so a later import of the same address is still not mailed: every import calls
suppressed_addresses_apply() for the customers it touched.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
from collections.abc import Iterable

import pandas as pd
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.http import HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone

from .models import Customer, OrderLine, SuppressedAddress

CHUNK = 5000


def email_hash(email: str) -> str:
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()


def customer_export(*, customer: Customer) -> dict:
    """Everything stored about one customer, as JSON-safe data."""
    from campaigns.models import Conversion, Event, Message, Offer

    fields = [
        "external_id",
        "email",
        "first_name",
        "last_name",
        "country",
        "timezone",
        "marketing_consent",
        "consent_at",
        "consent_source",
        "suppressed_reason",
        "suppressed_at",
        "orders_count",
        "total_spent",
        "first_order_at",
        "last_order_at",
        "created_at",
        "updated_at",
    ]
    lines = OrderLine.objects.filter(order__customer=customer).order_by("order__placed_at", "line_no")
    orders: dict[str, dict] = {}
    for line in lines.values(
        "order__external_id",
        "order__placed_at",
        "order__status",
        "order__total",
        "order__currency",
        "product__sku",
        "product__name",
        "quantity",
        "unit_price",
    ):
        order = orders.setdefault(
            line["order__external_id"],
            {
                "order_id": line["order__external_id"],
                "placed_at": line["order__placed_at"],
                "status": line["order__status"],
                "total": line["order__total"],
                "currency": line["order__currency"],
                "lines": [],
            },
        )
        order["lines"].append(
            {
                "sku": line["product__sku"],
                "product": line["product__name"],
                "quantity": line["quantity"],
                "unit_price": line["unit_price"],
            }
        )
    data = {
        "customer": {name: getattr(customer, name) for name in fields},
        "orders": list(orders.values()),
        "messages": list(
            Message.objects.filter(customer=customer)
            .order_by("created_at")
            .values("campaign__name", "status", "skip_reason", "created_at", "sent_at")
        ),
        "offers": list(
            Offer.objects.filter(message__customer=customer)
            .order_by("created_at", "rank")
            .values("message__campaign__name", "product__sku", "product__name", "reason", "created_at")
        ),
        "events": list(
            Event.objects.filter(customer=customer)
            .order_by("occurred_at")
            .values("kind", "occurred_at", "user_agent", "is_machine", "machine_reason")
        ),
        "conversions": list(
            Conversion.objects.filter(message__customer=customer)
            .order_by("attributed_at")
            .values("order__external_id", "product__sku", "revenue", "is_holdout", "attributed_at")
        ),
    }
    # Round-trip through the encoder: dates, decimals and the like become plain JSON values.
    return json.loads(json.dumps(data, cls=DjangoJSONEncoder))


def customer_erase(*, customer: Customer, now: dt.datetime | None = None) -> None:
    """Remove the customer's personal data; keep only the hashed address, suppressed as "erased"."""
    from campaigns.models import Event, Message, StoredOffers

    now = now or timezone.now()
    with transaction.atomic():
        if customer.email:
            SuppressedAddress.objects.update_or_create(
                email_hash=email_hash(customer.email), defaults={"reason": Customer.Suppression.ERASED}
            )
        Customer.objects.filter(pk=customer.pk).update(
            external_id=f"erased-{secrets.token_hex(8)}",
            email="",
            first_name="",
            last_name="",
            country="",
            timezone="UTC",
            marketing_consent=False,
            consent_source="",
            suppressed_reason=Customer.Suppression.ERASED,
            suppressed_at=now,
            updated_at=now,
        )
        Event.objects.filter(customer=customer).update(user_agent="", ip_hash="", meta={})
        StoredOffers.objects.filter(customer=customer).delete()  # derived from the purchase history
        Message.objects.filter(customer=customer).exclude(error="").update(error="")
    customer.refresh_from_db()


def suppressed_addresses_apply(*, customer_ids: Iterable[int] | None = None, now=None) -> int:
    """Suppress ("erased") not-yet-suppressed customers whose address hash is in SuppressedAddress.

    Returns how many customers were suppressed. customer_ids=None checks every customer.
    """
    if not SuppressedAddress.objects.exists():
        return 0
    now = now or timezone.now()
    candidates = Customer.objects.filter(suppressed_reason="").exclude(email="")
    id_lists = (
        [None] if customer_ids is None else _chunks(sorted(set(customer_ids)))  # None: one pass over all
    )
    suppressed = 0
    for ids in id_lists:
        rows = candidates if ids is None else candidates.filter(pk__in=ids)
        frame = pd.DataFrame.from_records(list(rows.values_list("pk", "email")), columns=["pk", "email"])
        if frame.empty:
            continue
        frame["hash"] = (
            frame["email"].str.strip().str.lower().map(lambda e: hashlib.sha256(e.encode()).hexdigest())
        )
        hashes = frame["hash"].unique().tolist()
        known = {
            h
            for part in _chunks(hashes)
            for h in SuppressedAddress.objects.filter(email_hash__in=part).values_list(
                "email_hash", flat=True
            )
        }
        hit = frame.loc[frame["hash"].isin(known), "pk"].tolist()
        for part in _chunks(hit):
            suppressed += Customer.objects.filter(pk__in=part, suppressed_reason="").update(
                suppressed_reason=Customer.Suppression.ERASED, suppressed_at=now
            )
    return suppressed


def _chunks(values: list) -> list[list]:
    return [values[i : i + CHUNK] for i in range(0, len(values), CHUNK)]


# --------------------------------------------------------------------------------------------- admin


class CustomerPrivacyAdminMixin:
    """Admin actions on customers: export as JSON, erase (needs the delete permission)."""

    actions = ["privacy_export", "privacy_erase"]

    @admin.action(description="Export selected customers' data (JSON)")
    def privacy_export(self, request, queryset):
        data = [customer_export(customer=c) for c in queryset[:1000]]
        response = HttpResponse(
            json.dumps(data, indent=2, ensure_ascii=False), content_type="application/json; charset=utf-8"
        )
        response["Content-Disposition"] = 'attachment; filename="customers-export.json"'
        return response

    @admin.action(description="Erase selected customers' personal data", permissions=["delete"])
    def privacy_erase(self, request, queryset):
        if not request.user.has_perm("customers.delete_customer"):
            self.message_user(request, "You may not erase customers.", messages.ERROR)
            return None
        if request.POST.get("confirm") != "yes":
            context = {
                **self.admin_site.each_context(request),
                "title": "Erase customers' personal data?",
                "customers": queryset[:100],
                "count": queryset.count(),
                "selected": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
                "select_across": request.POST.get("select_across", "0"),
                "opts": self.model._meta,
            }
            return TemplateResponse(request, "admin/customers/customer/erase_confirm.html", context)
        count = 0
        for customer in queryset:
            customer_erase(customer=customer)
            count += 1
        self.message_user(request, f"Erased the personal data of {count} customer(s).", messages.SUCCESS)
        return None
