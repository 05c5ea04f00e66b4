"""A customer's story: orders, emails, offers, events and conversions on one timeline."""

from __future__ import annotations

from django.db.models import Count
from django.urls import reverse

from customers.models import Customer, Order

from ..models import Conversion, Offer


def customer_story(*, customer: Customer, limit: int = 100) -> list[dict]:
    """One timeline of the customer's orders, emails, offers, events and conversions, newest first."""
    items: list[dict] = []
    for order in customer.orders.annotate(n=Count("lines")).order_by("-placed_at")[:limit]:
        items.append(
            {
                "at": order.placed_at,
                "kind": "order",
                "title": f"Order {order.external_id}",
                "detail": f"{order.n} line{'s' * (order.n != 1)}, {order.total} {order.currency}"
                + ("" if order.status == Order.Status.PLACED else f" ({order.get_status_display()})"),
                "url": reverse("admin:customers_order_change", args=[order.pk]),
            }
        )
    for message in customer.messages.select_related("campaign").order_by("-created_at")[:limit]:
        status = message.get_status_display()
        if message.skip_reason:
            status += f": {message.get_skip_reason_display()}"
        items.append(
            {
                "at": message.sent_at or message.created_at,
                "kind": "email",
                "title": f"{message.campaign.name}",
                "detail": status,
                "url": reverse("admin:campaigns_message_change", args=[message.pk]),
            }
        )
    offers = Offer.objects.filter(message__customer=customer).select_related("product", "message")
    for offer in offers.order_by("-created_at")[:limit]:
        items.append(
            {
                "at": offer.message.sent_at or offer.created_at,
                "kind": "offer",
                "title": f"Offered {offer.product.name or offer.product.sku}",
                "detail": f"rank {offer.rank}, score {offer.score:.3f}, model {offer.model_version_id or '—'}: "
                f"{offer.reason}",
                "url": "",
            }
        )
    events = customer.events.select_related("offer__product", "campaign")
    for event in events.order_by("-occurred_at")[:limit]:
        detail = f"offer {event.offer.product.sku}" if event.offer_id else ""
        if event.is_machine:
            detail = f"{detail} machine ({event.machine_reason or 'bot/proxy'})".strip()
        # Which email it answered: an unsubscribe or an acceptance says little without it.
        where = f" · {event.campaign.name}" if event.campaign_id else ""
        items.append(
            {
                "at": event.occurred_at,
                "kind": "event",
                "title": event.get_kind_display(),
                "detail": detail + where + (" · simulated" if event.is_simulated else ""),
                "url": reverse("admin:campaigns_message_change", args=[event.message_id])
                if event.message_id
                else "",
            }
        )
    conversions = Conversion.objects.filter(message__customer=customer).select_related(
        "order", "product", "message__campaign"
    )
    for conversion in conversions.order_by("-order__placed_at")[:limit]:
        group = "holdout purchase" if conversion.is_holdout else "converted offer"
        items.append(
            {
                "at": conversion.order.placed_at,
                "kind": "conversion",
                "title": f"{group}: {conversion.product.name or conversion.product.sku}",
                "detail": f"{conversion.revenue} via {conversion.message.campaign.name}",
                "url": "",
            }
        )
    items.sort(key=lambda item: item["at"], reverse=True)
    return items[:limit]
