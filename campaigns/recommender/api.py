"""GET /api/v1/customers/<external_id>/recommendations: the next best offers, as JSON.

Bearer-token authentication against settings.API_TOKENS, compared in constant time. Without an anchor
the offers usually come stored (campaigns.recommender.stored); with one they are scored live.
"""

from __future__ import annotations

import hmac

from django.conf import settings
from django.http import JsonResponse
from django.views.decorators.http import require_GET

from customers.models import Customer, Order, Product

from .service import recommend_for_customers
from .stored import offers_for

MAX_K = 20


def _error(status: int, message: str) -> JsonResponse:
    response = JsonResponse({"error": message}, status=status)
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="api"'
    return response


def token_valid(header: str) -> bool:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return False
    given = token.strip().encode()
    # Compare with every configured token so the time taken says nothing about which one matched.
    matched = False
    for allowed in settings.API_TOKENS:
        matched |= hmac.compare_digest(given, allowed.encode())
    return matched


@require_GET
def customer_recommendations(request, external_id: str):
    if not token_valid(request.headers.get("Authorization", "")):
        return _error(401, "missing or invalid bearer token")
    raw_k = request.GET.get("k", "3")
    try:
        k = int(raw_k)
    except ValueError:
        return _error(400, f"k must be an integer between 1 and {MAX_K}, got {raw_k!r}")
    if not 1 <= k <= MAX_K:
        return _error(400, f"k must be between 1 and {MAX_K}, got {k}")
    customer = Customer.objects.filter(external_id=external_id).values_list("pk", flat=True).first()
    if customer is None:
        return _error(404, f"unknown customer {external_id!r}")
    anchors = None
    anchor_ext = request.GET.get("anchor_order")
    if anchor_ext:
        order = (
            Order.objects.filter(external_id=anchor_ext, customer_id=customer)
            .values_list("pk", flat=True)
            .first()
        )
        if order is None:
            return _error(404, f"customer {external_id!r} has no order {anchor_ext!r}")
        anchors = {customer: order}
    if anchors:
        recs = recommend_for_customers(customer_ids=[customer], k=k, anchors=anchors)[customer]
    else:
        recs = offers_for(customer_id=customer, k=k)
    products = Product.objects.in_bulk([r.product_id for r in recs])
    return JsonResponse(
        {
            "customer": external_id,
            "anchor_order": anchor_ext or None,
            "model_version": recs[0].model_version_id if recs else None,
            "recommendations": [
                {
                    "product_id": r.product_id,
                    "sku": products[r.product_id].sku,
                    "name": products[r.product_id].name,
                    "score": r.score,
                    "reason": r.reason,
                }
                for r in recs
            ],
        }
    )
