"""Recipients' endpoints: open pixel, click redirect, offer page, accept, unsubscribe, preferences.

Every link carries "<row token>.<hmac of its purpose>" (campaigns.tokens): a tampered, unknown or
wrong-purpose token is a 404 before any database work, and the pixel answers the same image whatever
its token. Clicks redirect only to the URL stored for that link or offer (the honeypot's: to the site).
GET and HEAD never change a customer's state: accepting and unsubscribing are POSTs behind a
confirmation page, except RFC 8058's one-click POST, which needs no cookie or CSRF token and answers 200.
Open, click and accept links expire TRACKING_TOKEN_DAYS (365) after sending; unsubscribe and preference
links never do.

The pixel and the click are hot paths: on PostgreSQL one statement each (campaigns.events), which also
keeps the message's first-touch columns (opened_at, clicked_at) that reports count. With
TRACKING_BUFFER on (it needs REDIS_URL) they queue a record in Redis instead, and the Celery task
campaigns.tracking_flush writes the events in bulk (campaigns.tracking_buffer); while Redis cannot be
reached they record directly.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging

import redis
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.http import Http404, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_safe

from customers.models import Customer

from .events import (
    click_machine_reason,
    click_record_pg,
    click_targets,
    customer_suppress,
    event_record,
    open_machine_reason,
    open_record_pg,
)
from .models import Event, Message, Offer
from .sending import product_url, with_utm
from .tokens import purpose_token, purpose_token_check
from .tracking_buffer import buffer_enabled, click_buffer, open_buffer

# The classic 1×1 transparent GIF (43 bytes).
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAP///wAAACH5BAEAAAAALAAAAAABAAEAAAICRAEAOw==")
_NO_CACHE = "no-store, no-cache, must-revalidate, max-age=0, private"
logger = logging.getLogger(__name__)


def _private(response: HttpResponse) -> HttpResponse:
    # Tokens are capabilities: keep them out of caches, search engines and the next site's Referer.
    response["Cache-Control"] = _NO_CACHE
    # "same-origin", not "no-referrer": with no-referrer browsers send "Origin: null" on our own form
    # POSTs (accept, unsubscribe) and Django's CSRF check refuses them; other sites still get no Referer.
    response["Referrer-Policy"] = "same-origin"
    response["X-Robots-Tag"] = "noindex, nofollow"
    return response


def _expired(sent_at: dt.datetime | None, created_at: dt.datetime | None, now: dt.datetime) -> bool:
    start = sent_at or created_at
    days = getattr(settings, "TRACKING_TOKEN_DAYS", 365)
    return start is not None and now - start > dt.timedelta(days=days)


def _message_row(value: str, purpose: str) -> dict | None:
    token = purpose_token_check(value, purpose)
    if token is None:
        return None
    return (
        Message.objects.filter(token=token)
        .values("pk", "customer_id", "campaign_id", "sent_at", "created_at", "token")
        .first()
    )


def _page(request, template: str, context: dict, status: int = 200) -> HttpResponse:
    return _private(render(request, template, context, status=status))


# ------------------------------------------------------------------------------------------- tracking


def _oldest(now: dt.datetime) -> dt.datetime:
    return now - dt.timedelta(days=getattr(settings, "TRACKING_TOKEN_DAYS", 365))


def _open_reason(request) -> str:
    if request.method == "HEAD":
        return "head request"
    return open_machine_reason(
        user_agent=request.META.get("HTTP_USER_AGENT", ""), address=request.META.get("REMOTE_ADDR", "")
    )


@require_safe
def open_pixel(request, token):
    now = timezone.now()
    message_token = purpose_token_check(token, "open")
    if message_token:
        _open_record(token, message_token, request, now)
    response = HttpResponse(PIXEL, content_type="image/gif")
    response["Pragma"] = "no-cache"
    response["Expires"] = "0"
    return _private(response)


def _open_record(token: str, message_token: str, request, now: dt.datetime) -> None:
    reason = _open_reason(request)
    if buffer_enabled():
        try:
            return open_buffer(token=message_token, request=request, reason=reason, now=now)
        except redis.RedisError:
            logger.warning("tracking buffer unreachable: recording the open directly", exc_info=True)
    if connection.vendor == "postgresql":
        return open_record_pg(
            token=message_token, request=request, reason=reason, now=now, oldest=_oldest(now)
        )
    row = _message_row(token, "open")
    if row is not None and not _expired(row["sent_at"], row["created_at"], now):
        event_record(
            kind=Event.Kind.OPEN,
            message_id=row["pk"],
            campaign_id=row["campaign_id"],
            customer_id=row["customer_id"],
            request=request,
            machine_reason=reason,
            occurred_at=now,
        )


# The three click routes, by what their token names: route name → (purpose, campaigns.events source).
CLICK_ROUTES = {
    "track-click": ("click", "link"),
    "track-offer": ("offer-click", "offer"),
    "track-honeypot": ("honeypot", "honeypot"),
}


def _click_redirect(request, token: str, route: str) -> HttpResponse:
    purpose, source = CLICK_ROUTES[route]
    row_token = purpose_token_check(token, purpose)
    url = _click(source, row_token, request, timezone.now()) if row_token else None
    if url is None:
        raise Http404("unknown link")
    # Only the stored URL, never anything from the request.
    return _private(HttpResponseRedirect(url))


@require_safe
def click(request, token):
    return _click_redirect(request, token, "track-click")


@require_safe
def offer_click(request, token):
    return _click_redirect(request, token, "track-offer")


@require_safe
def honeypot_click(request, token):
    return _click_redirect(request, token, "track-honeypot")


def _click(source: str, token: str, request, now: dt.datetime) -> str | None:
    """The link's stored URL (None if unknown or expired), the click recorded or queued."""
    if buffer_enabled():
        try:
            return click_buffer(source=source, token=token, request=request, now=now, oldest=_oldest(now))
        except redis.RedisError:
            logger.warning("tracking buffer unreachable: recording the click directly", exc_info=True)
    if connection.vendor == "postgresql":
        return click_record_pg(source=source, token=token, request=request, now=now, oldest=_oldest(now))
    return _click_record(source, token, request, now)


def _click_record(source: str, token: str, request, now: dt.datetime) -> str | None:
    link = next(iter(click_targets(source, [token])), None)
    if link is None or _expired(link["sent_at"], link["created_at"], now):
        return None
    reason = click_machine_reason(
        method=request.method,
        user_agent=request.META.get("HTTP_USER_AGENT", ""),
        is_honeypot=link["is_honeypot"],
        sent_at=link["sent_at"],
        now=now,
    )
    event_record(
        kind=Event.Kind.CLICK,
        message_id=link["message_id"],
        campaign_id=link["campaign_id"],
        customer_id=link["customer_id"],
        offer_id=link["offer_id"],
        request=request,
        machine_reason=reason,
        occurred_at=now,
    )
    return link["url"]


# --------------------------------------------------------------------------------------------- offers


def _accept_path(offer: Offer) -> str:
    return reverse("accept", kwargs={"token": purpose_token(offer.token, "accept")})


def _offer_rows(offers: list[Offer]) -> list[dict]:
    accepted = set(
        Event.objects.filter(offer__in=offers, kind=Event.Kind.ACCEPT).values_list("offer_id", flat=True)
    )
    return [
        {
            "name": o.product.name or o.product.sku,
            "reason": o.reason,
            "price": o.product.price,
            "currency": o.product.currency,
            "image_url": o.product.image_url,
            "accept_path": _accept_path(o),
            "accepted": o.pk in accepted,
        }
        for o in offers
    ]


@require_safe
def offer_page(request, token):
    row = _message_row(token, "offers")
    if row is None or _expired(row["sent_at"], row["created_at"], timezone.now()):
        raise Http404("unknown link")
    offers = list(Offer.objects.filter(message_id=row["pk"]).select_related("product").order_by("rank"))
    return _page(request, "public/offers.html", {"offers": _offer_rows(offers), "single": False})


def accept(request, token):
    offer_token = purpose_token_check(token, "accept")
    offer = (
        Offer.objects.filter(token=offer_token)
        .select_related("product", "message", "message__campaign")
        .first()
        if offer_token
        else None
    )
    now = timezone.now()
    if offer is None or _expired(offer.message.sent_at, offer.message.created_at, now):
        raise Http404("unknown link")
    if request.method in ("GET", "HEAD"):
        return _page(request, "public/offers.html", {"offers": _offer_rows([offer]), "single": True})
    if request.method != "POST":
        return HttpResponseNotAllowed(["GET", "HEAD", "POST"])
    event = {
        "message_id": offer.message_id,
        "campaign_id": offer.message.campaign_id,
        "customer_id": offer.message.customer_id,
        "offer_id": offer.pk,
        "request": request,
        "occurred_at": now,
    }
    # A sandbox that submits the forms it finds (a scanner's agent, none, or seconds after delivery) has
    # not accepted anything: kept as a machine click, which no report, first touch or automation counts.
    # An acceptance it recorded would also take the offer's only one (the unique index) from the person.
    reason = click_machine_reason(
        method=request.method,
        user_agent=request.META.get("HTTP_USER_AGENT", ""),
        is_honeypot=False,
        sent_at=offer.message.sent_at,
        now=now,
    )
    if reason:
        event_record(kind=Event.Kind.CLICK, machine_reason=reason, meta={"via": "accept form"}, **event)
    else:
        try:
            # One acceptance per offer is a partial unique index: a replay or a concurrent POST adds nothing.
            with transaction.atomic():
                event_record(kind=Event.Kind.ACCEPT, **event)
        except IntegrityError:
            pass
    # Where the offer's link in the email led (stored with it); offers sent before 0014: the product's now.
    url = offer.url or with_utm(product_url(offer.product), offer.message.campaign)
    return _private(HttpResponseRedirect(url))


# ---------------------------------------------------------------------------------------- unsubscribe


def _unsubscribe(request, row: dict, source: str) -> None:
    now = timezone.now()
    if customer_suppress(customer_id=row["customer_id"], reason=Customer.Suppression.UNSUBSCRIBED, now=now):
        event_record(
            kind=Event.Kind.UNSUBSCRIBE,
            message_id=row["pk"],
            campaign_id=row["campaign_id"],
            customer_id=row["customer_id"],
            request=request,
            occurred_at=now,
            meta={"via": source},
        )


def _done(request, title: str, text: str) -> HttpResponse:
    return _page(request, "public/done.html", {"title": title, "text": text})


_UNSUBSCRIBED = (
    "You are unsubscribed",
    "You will not receive further product suggestions from us. Order and service emails are not affected.",
)


def unsubscribe(request, token):
    row = _message_row(token, "unsubscribe")
    if row is None:
        raise Http404("unknown link")
    if request.method in ("GET", "HEAD"):
        if Customer.objects.filter(pk=row["customer_id"]).exclude(suppressed_reason="").exists():
            return _done(request, *_UNSUBSCRIBED)  # already: nothing to confirm
        return _page(request, "public/unsubscribe.html", {})
    if request.method != "POST":
        return HttpResponseNotAllowed(["GET", "HEAD", "POST"])
    _unsubscribe(request, row, "link")
    return _done(request, *_UNSUBSCRIBED)


@csrf_exempt
def one_click_unsubscribe(request, token):
    """RFC 8058: the mailbox provider POSTs "List-Unsubscribe=One-Click" with no cookies; answer 200."""
    row = _message_row(token, "one-click")
    if row is None:
        raise Http404("unknown link")
    if request.method in ("GET", "HEAD"):
        # Someone opened the header's URL in a browser: confirm first, as with the footer link.
        if Customer.objects.filter(pk=row["customer_id"]).exclude(suppressed_reason="").exists():
            return _done(request, *_UNSUBSCRIBED)
        return _page(request, "public/unsubscribe.html", {})
    if request.method != "POST":
        return HttpResponseNotAllowed(["GET", "HEAD", "POST"])
    _unsubscribe(request, row, "one-click")
    return _private(HttpResponse("Unsubscribed.\n", content_type="text/plain; charset=utf-8"))


PAUSES = {"pause30": 30, "pause90": 90}


def preferences(request, token):
    row = _message_row(token, "preferences")
    if row is None:
        raise Http404("unknown link")
    now = timezone.now()
    customer = (
        Customer.objects.filter(pk=row["customer_id"]).values("suppressed_reason", "paused_until").first()
    )
    paused_until = customer and customer["paused_until"]
    paused_until = paused_until if paused_until and paused_until > now else None
    if request.method in ("GET", "HEAD"):
        subscribed = customer is not None and not customer["suppressed_reason"]
        return _page(
            request, "public/preferences.html", {"subscribed": subscribed, "paused_until": paused_until}
        )
    if request.method != "POST":
        return HttpResponseNotAllowed(["GET", "HEAD", "POST"])
    choice = request.POST.get("choice")
    if choice == "leave":
        _unsubscribe(request, row, "preferences")
        return _done(request, *_UNSUBSCRIBED)
    if choice in PAUSES:
        until = now + dt.timedelta(days=PAUSES[choice])
        Customer.objects.filter(pk=row["customer_id"]).update(paused_until=until)
        return _done(request, "Taking a break", f"No product suggestions from us until {until:%-d %B %Y}.")
    if customer is None or customer["suppressed_reason"]:  # a page left open since unsubscribing
        return _done(request, *_UNSUBSCRIBED)
    if choice == "stay" and paused_until is not None:  # "receive again" ends the break
        Customer.objects.filter(pk=row["customer_id"]).update(paused_until=None)
        return _done(request, "Welcome back", "You will receive our product suggestions again.")
    if paused_until is not None:
        return _done(
            request, "Nothing changed", f"No product suggestions from us until {paused_until:%-d %B %Y}."
        )
    return _done(request, "Nothing changed", "You will keep receiving our product suggestions.")
