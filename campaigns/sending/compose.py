"""Compose a claimed message: its offers (scored per batch), tracked links, rendered parts and headers."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from django.conf import settings
from django.core.mail import EmailMultiAlternatives

from customers.models import Product

from ..models import Campaign, Message, Offer, TrackedLink
from ..recommender import recommend_for_customers
from ..rendering import email_render
from ..tokens import public_url


def with_utm(url: str, campaign: Campaign) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(
        {
            "utm_source": campaign.utm_source,
            "utm_medium": campaign.utm_medium,
            "utm_campaign": campaign.utm_campaign or campaign.name,
        }
    )
    return urlunsplit(parts._replace(query=urlencode(query)))


def product_url(product: Product) -> str:
    return product.product_url or f"{settings.SITE_URL}/products/{product.sku}"


def offers_create(*, messages: list[Message]) -> dict[int, list[Offer]]:
    """Score the batch's customers in one call and store each message's offers and their links."""
    campaign = messages[0].campaign
    recs = recommend_for_customers(
        customer_ids=[m.customer_id for m in messages],
        k=campaign.offers_per_email,
        anchors={m.customer_id: m.trigger_order_id for m in messages if m.trigger_order_id},
        categories=campaign.allowed_categories or None,
        min_score=campaign.min_offer_score,
    )
    offers = [
        Offer(
            message=m,
            product_id=r.product_id,
            rank=i,
            score=r.score,
            reason=r.reason[:300],
            model_version_id=r.model_version_id,
        )
        for m in messages
        for i, r in enumerate(recs.get(m.customer_id, [])[: campaign.offers_per_email], start=1)
    ]
    Offer.objects.bulk_create(offers, ignore_conflicts=True)
    stored = list(
        Offer.objects.filter(message__in=messages).select_related("product").order_by("message_id", "rank")
    )
    links = [
        TrackedLink(message_id=o.message_id, offer=o, url=with_utm(product_url(o.product), campaign))
        for o in stored
    ]
    TrackedLink.objects.bulk_create(links)
    by_message: dict[int, list[Offer]] = {}
    for offer, link in zip(stored, links, strict=True):
        offer.click_link = link
        by_message.setdefault(offer.message_id, []).append(offer)
    return by_message


def _context(message: Message, offers: list[Offer]) -> dict:
    customer = message.customer
    order = message.trigger_order
    return {
        "customer": {
            "first_name": customer.first_name,
            "last_name": customer.last_name,
            "full_name": customer.full_name,
            "email": customer.email,
            "country": customer.country,
        },
        "offers": [
            {
                "name": o.product.name or o.product.sku,
                "sku": o.product.sku,
                "price": o.product.price,
                "currency": o.product.currency,
                "category": o.product.category,
                "image_url": o.product.image_url,
                "reason": o.reason,
                "score": round(o.score, 3),
                "url": public_url("track-click", o.click_link.token, "click"),
                "accept_url": public_url("accept", o.token, "accept"),
            }
            for o in offers
        ],
        "order": (
            {
                "external_id": order.external_id,
                "placed_at": order.placed_at.date().isoformat(),
                "total": order.total,
            }
            if order
            else None
        ),
        "campaign": {"name": message.campaign.name},
        "offer_page_url": public_url("offers", message.token, "offers"),
        "unsubscribe_url": public_url("unsubscribe", message.token, "unsubscribe"),
        "preferences_url": public_url("preferences", message.token, "preferences"),
    }


def message_id_header(token: str) -> str:
    # Derived from the message's random token, so a whole batch's ids are recorded in one UPDATE.
    return f"<{token}@{mail_domain()}>"


def mail_domain() -> str:
    return settings.DEFAULT_FROM_EMAIL.rpartition("@")[2] or "localhost"


def message_build(
    *, message: Message, offers: list[Offer]
) -> tuple[EmailMultiAlternatives, list[TrackedLink]]:
    """The email for one claimed message (three parts, list headers) and the tracked links to store."""
    campaign, template = message.campaign, message.campaign.template
    links: list[TrackedLink] = []

    def track(url: str) -> str:
        if url.startswith(settings.SITE_URL + "/"):
            return url  # already ours (tracked offer links, offer page)
        link = TrackedLink(message=message, url=url)
        links.append(link)
        return public_url("track-click", link.token, "click")

    honeypot = TrackedLink(message=message, url=settings.SITE_URL + "/", is_honeypot=True)
    footer = {
        "unsubscribe_url": public_url("unsubscribe", message.token, "unsubscribe"),
        "preferences_url": public_url("preferences", message.token, "preferences"),
        "pixel_url": public_url("track-open", message.token, "open"),
        "honeypot_url": public_url("track-click", honeypot.token, "click"),
    }
    rendered = email_render(
        subject=template.subject,
        html=template.html,
        text=template.text,
        layout=template.layout,
        context=_context(message, offers),
        track=track,
        footer=footer,
    )
    domain = mail_domain()
    email = EmailMultiAlternatives(
        subject=rendered.subject,
        body=rendered.text,
        from_email=campaign.from_email or settings.DEFAULT_FROM_EMAIL,
        to=[message.customer.email],
        headers={
            "Message-ID": message_id_header(message.token),
            "List-Unsubscribe": (
                f"<{public_url('one-click', message.token, 'one-click')}>, "
                f"<mailto:unsubscribe@{domain}?subject=unsubscribe%20{message.token}>"
            ),
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            "X-Xsell-Campaign": str(campaign.pk),
            "X-Xsell-Message": message.token,
        },
    )
    email.attach_alternative(rendered.html, "text/html")
    email.metadata = {
        "xsell_message": message.token,
        "xsell_campaign": str(campaign.pk),
    }  # read by anymail ESPs
    return email, [*links, honeypot]
