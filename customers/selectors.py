"""Reads for the admin and the API: a customer's purchase timeline and per-product sales."""

from django.db.models import Prefetch

from .models import Customer, Order, OrderLine


def customer_timeline(*, customer: Customer, limit: int = 50) -> list[Order]:
    """The customer's latest orders, newest first, with their lines and products in two queries."""
    lines = OrderLine.objects.select_related("product").order_by("line_no")
    return list(
        customer.orders.order_by("-placed_at").prefetch_related(Prefetch("lines", queryset=lines))[:limit]
    )
