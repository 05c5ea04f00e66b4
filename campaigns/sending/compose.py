"""Compose a claimed message: its offers (scored per chunk), tracked links, rendered parts and headers.

Offers are written in one statement per chunk and the template's own links in one per chunk, without
model instances or reading rows back: at 5,000 messages the ORM objects and round trips cost more than
the rendering. An offer's link and the honeypot are the offer's and the message's own tokens
(campaigns.events.CLICK_SOURCES): no rows of their own.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from email.utils import parseaddr
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db import connection
from django.utils import timezone

from customers.bulk import copy_rows
from customers.models import Product

from ..models import Campaign, Message, Offer, TrackedLink, new_token
from ..recommender.stored import ProductRows, offers_for_customers
from ..rendering import RenderedEmail, RenderError, email_render, pages_inline, render_session
from ..tokens import PublicUrls
from .mime import CampaignEmail

LINK_COLUMNS = ["message_id", "offer_id", "token", "url", "is_honeypot"]


@dataclass(slots=True)
class OfferDraft:
    """One offer of a claimed message: its click link in the email is its own token, leading to url."""

    message_id: int
    rank: int
    product: dict
    score: float
    reason: str
    model_version_id: int | None
    token: str
    url: str  # the product page (with the campaign's UTM parameters) the click link leads to
    pk: int | None = None  # set once stored
    url_stored: bool = False  # an offer stored before its URL was kept has url = '' in its row


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


def product_url(product: Product | dict) -> str:
    if isinstance(product, dict):
        return product["product_url"] or f"{settings.SITE_URL}/products/{product['sku']}"
    return product.product_url or f"{settings.SITE_URL}/products/{product.sku}"


def offers_pick(
    *, messages: list[Message], products: ProductRows | None = None
) -> dict[int, list[OfferDraft]]:
    """Each message's offers, the chunk's customers scored in one call; nothing is written. products: the
    batch's product rows (read once for all its chunks).

    A retried message keeps the offers stored on its first attempt (read here, with their ids); the
    others' offers get their ids when offers_save stores them, which needs to happen before the email
    goes out but not before it is rendered.
    """
    products = products or ProductRows()  # one for both reads of this chunk when the caller has none
    campaign = messages[0].campaign
    k = campaign.offers_per_email
    rows = list(
        Offer.objects.filter(message_id__any=[m.pk for m in messages if m.attempts > 1]).values_list(
            "message_id", "product_id", "rank", "score", "reason", "model_version_id", "token", "pk", "url"
        )
    )
    kept = {row[0] for row in rows}
    fresh = [m for m in messages if m.pk not in kept]
    recs = offers_for_customers(
        customer_ids=[m.customer_id for m in fresh],
        k=k,
        anchors={m.customer_id: m.trigger_order_id for m in fresh if m.trigger_order_id},
        categories=campaign.allowed_categories or None,
        min_score=campaign.min_offer_score,
        products=products,
    )
    rows += [
        (
            m.pk,
            int(r.product_id),
            rank,
            float(r.score),
            r.reason[:300],
            r.model_version_id,
            new_token(),
            None,
            "",
        )
        for m in fresh
        for rank, r in enumerate(_distinct(recs.get(m.customer_id, []))[:k], start=1)
    ]
    offered = products.get(row[1] for row in rows)
    urls = {pk: with_utm(product_url(p), campaign) for pk, p in offered.items()}
    by_message: dict[int, list[OfferDraft]] = {}
    for message_id, product_id, rank, score, reason, version, token, pk, url in sorted(
        rows, key=lambda r: (r[0], r[2])
    ):
        by_message.setdefault(message_id, []).append(
            OfferDraft(
                message_id=message_id,
                rank=rank,
                product=offered[product_id],
                score=score,
                reason=reason,
                model_version_id=version,
                token=token,
                url=url or urls[product_id],
                pk=pk,
                url_stored=bool(url),
            )
        )
    return by_message


def _distinct(recs: list) -> list:
    """Recommendations without a repeated product (a message offers a product once: a constraint)."""
    seen: set[int] = set()
    kept = []
    for r in recs:
        if int(r.product_id) not in seen:
            seen.add(int(r.product_id))
            kept.append(r)
    return kept


def offers_save(offers: dict[int, list[OfferDraft]]) -> None:
    """Store the offers picked for a chunk (one statement), with the URLs their links lead to."""
    drafts = [o for chunk in offers.values() for o in chunk]
    new = [o for o in drafts if o.pk is None]
    stored = _offers_insert(
        [
            (o.message_id, o.product["id"], o.rank, o.score, o.reason, o.model_version_id, o.token, o.url)
            for o in new
        ]
    )
    for o in new:
        if o.token not in stored:  # the message is claimed by this worker: nobody else stores its offers
            raise RuntimeError(f"offer {o.rank} of message {o.message_id} was already stored")
        o.pk, o.url_stored = stored[o.token], True
    for o in drafts:
        if not o.url_stored:  # kept from an attempt made before offers kept their URLs: rare, one by one
            Offer.objects.filter(pk=o.pk, url="").update(url=o.url)
            o.url_stored = True


OFFER_COLUMNS = [
    "id",
    "message_id",
    "product_id",
    "rank",
    "score",
    "reason",
    "model_version_id",
    "token",
    "url",
]


def _offers_insert(rows: list[tuple]) -> dict[str, int]:
    """Insert offer rows; {token: id} of the rows inserted. A row already stored is an error (the message
    is claimed by this worker): the insert fails on the constraint.

    On PostgreSQL the ids are drawn from the table's sequence first and the rows written with COPY:
    an INSERT ... RETURNING with the rows as arrays had every value quoted in Python by psycopg's
    client-side binding, which a profile of a send put at 4% of the process's time (bench/README.md)."""
    if not rows:
        return {}
    now = timezone.now()
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT nextval(pg_get_serial_sequence('campaigns_offer', 'id')) FROM generate_series(1, %s)",
                [len(rows)],
            )
            ids = [pk for (pk,) in cursor.fetchall()]
        copy_rows(
            Offer,
            [*OFFER_COLUMNS, "created_at"],
            [(pk, *row, now) for pk, row in zip(ids, rows, strict=True)],
        )
        return {row[6]: pk for pk, row in zip(ids, rows, strict=True)}
    Offer.objects.bulk_create(
        [
            Offer(
                message_id=m,
                product_id=p,
                rank=r,
                score=s,
                reason=re,
                model_version_id=v,
                token=t,
                url=u,
                created_at=now,
            )
            for m, p, r, s, re, v, t, u in rows
        ],
        ignore_conflicts=True,
    )
    return dict(Offer.objects.filter(token__in=[row[6] for row in rows]).values_list("token", "pk"))


def links_store(rows: list[tuple]) -> None:
    """Store the template's own tracked links (rows of LINK_COLUMNS) in one COPY: before any email with
    them goes out."""
    copy_rows(TrackedLink, LINK_COLUMNS, rows)


def _context(message: Message, offers: list[OfferDraft], public_url: PublicUrls) -> dict:
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
                "name": o.product["name"] or o.product["sku"],
                "sku": o.product["sku"],
                "price": o.product["price"],
                "currency": o.product["currency"],
                "category": o.product["category"],
                "image_url": o.product["image_url"],
                "reason": o.reason,
                "score": round(o.score, 3),
                "url": public_url("track-offer", o.token, "offer-click"),
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
    }


def message_id_header(token: str) -> str:
    # Derived from the message's random token, so a whole batch's ids are recorded in one UPDATE.
    return f"<{token}@{mail_domain()}>"


def mail_domain() -> str:
    return _domain_of(settings.DEFAULT_FROM_EMAIL)


@functools.lru_cache(maxsize=8)  # per email: parsing the address takes longer than the rest of a header
def _domain_of(address: str) -> str:
    # The address part: DEFAULT_FROM_EMAIL may carry a display name ("Shop <offers@shop.example>").
    return parseaddr(address)[1].rpartition("@")[2] or "localhost"


def messages_build(
    *, messages: list[Message], offers: dict[int, list[OfferDraft]]
) -> tuple[list[tuple[Message, EmailMultiAlternatives]], list[tuple], list[tuple[Message, RenderError]]]:
    """The emails of a chunk of claimed messages, the rows of their other links, and the messages that
    failed to render (with why). CSS is inlined for the whole chunk in one call (rendering.pages_inline)."""
    rendered, failed = [], []
    urls = PublicUrls()
    with render_session():
        for message in messages:
            try:
                rendered.append((message, *_message_render(message, offers[message.pk], urls)))
            except RenderError as exc:
                failed.append((message, exc))
    try:
        pages = pages_inline([parts.html for _, parts, _ in rendered])
    except Exception:  # noqa: BLE001 - find the page the inliner refused: only its message fails
        pages = []
        for message, parts, _ in rendered:
            try:
                pages.append(pages_inline([parts.html])[0])
            except Exception as exc:  # noqa: BLE001
                pages.append(None)
                failed.append((message, RenderError(f"CSS inlining: {exc}")))
    ready, links = [], []
    for (message, parts, message_links), page in zip(rendered, pages, strict=True):
        if page is not None:
            ready.append((message, _email(message, parts, page, urls)))
            links += message_links
    return ready, links, failed


def _message_render(
    message: Message, offers: list[OfferDraft], public_url: PublicUrls
) -> tuple[RenderedEmail, list[tuple]]:
    """The three parts of one claimed message (CSS not inlined yet) and the rows of its other links."""
    template = message.campaign.template
    links: list[tuple] = []
    site = settings.SITE_URL + "/"

    def track(url: str) -> str:
        if url.startswith(site):
            return url  # already ours (tracked offer links, offer page)
        token = new_token()
        links.append((message.pk, None, token, url, False))
        return public_url("track-click", token, "click")

    unsubscribe = public_url("unsubscribe", message.token, "unsubscribe")
    preferences = public_url("preferences", message.token, "preferences")
    context = _context(message, offers, public_url)
    context["unsubscribe_url"], context["preferences_url"] = unsubscribe, preferences
    footer = {
        "unsubscribe_url": unsubscribe,
        "preferences_url": preferences,
        "pixel_url": public_url("track-open", message.token, "open"),
        "honeypot_url": public_url("track-honeypot", message.token, "honeypot"),
    }
    rendered = email_render(
        subject=template.subject,
        html=template.html,
        text=template.text,
        layout=template.layout,
        context=context,
        track=track,
        footer=footer,
        inline_css=False,
    )
    return rendered, links


def _email(message: Message, rendered: RenderedEmail, page: str, public_url: PublicUrls) -> CampaignEmail:
    """The email of one message (three parts, list headers), its HTML part being `page`."""
    campaign = message.campaign
    domain = mail_domain()
    email = CampaignEmail(
        subject=rendered.subject,
        body=rendered.text,
        from_email=campaign.from_email or settings.DEFAULT_FROM_EMAIL,
        to=[message.customer.email],
        headers={
            "Message-ID": f"<{message.token}@{domain}>",
            "List-Unsubscribe": (
                f"<{public_url('one-click', message.token, 'one-click')}>, "
                f"<mailto:unsubscribe@{domain}?subject=unsubscribe%20{message.token}>"
            ),
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            "X-Xsell-Campaign": str(campaign.pk),
            "X-Xsell-Message": message.token,
        },
    )
    email.attach_alternative(page, "text/html")
    email.metadata = {
        "xsell_message": message.token,
        "xsell_campaign": str(campaign.pk),
    }  # read by anymail ESPs
    return email
