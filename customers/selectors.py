"""Reads for the admin and the API: a customer's purchase timeline and per-product sales."""

from django.db.models import DecimalField, ExpressionWrapper, F, OuterRef, Prefetch, Subquery, Sum
from django.db.models.functions import Coalesce

from .models import Customer, Order, OrderLine


def customer_timeline(*, customer: Customer, limit: int = 50) -> list[Order]:
    """The customer's latest orders, newest first, with their lines and products in two queries."""
    lines = OrderLine.objects.select_related("product").order_by("line_no")
    return list(
        customer.orders.order_by("-placed_at").prefetch_related(Prefetch("lines", queryset=lines))[:limit]
    )


def product_sales_annotations() -> dict:
    """Units sold and revenue per product as correlated subqueries: evaluated only for the rows shown."""
    placed = OrderLine.objects.filter(product=OuterRef("pk"), order__status=Order.Status.PLACED).values(
        "product"
    )
    amount = ExpressionWrapper(
        F("quantity") * F("unit_price"), output_field=DecimalField(max_digits=14, decimal_places=2)
    )
    return {
        "units_sold": Coalesce(Subquery(placed.annotate(n=Sum("quantity")).values("n")[:1]), 0),
        "revenue": Coalesce(
            Subquery(placed.annotate(r=Sum(amount)).values("r")[:1]),
            0,
            output_field=DecimalField(max_digits=14, decimal_places=2),
        ),
    }
