"""Recording recipients' events: privacy-preserving request facts and machine-traffic classification.

An event keeps its time, the user agent (at most 500 characters) and a keyed hash of the client's
network (/24 for IPv4, /48 for IPv6), never the address itself. Machine traffic (privacy proxies that
prefetch images, link scanners, bots) is recorded but flagged, so human metrics, automations and
attribution can leave it out with `is_machine=False`.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import ipaddress
import re
import socket

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Min, OuterRef, Q, Subquery
from django.utils import timezone

from customers.models import Customer

from .models import Event, Message, Offer, TrackedLink

UA_MAX = 500

# Image proxies fetch every image when a mail is delivered or displayed: an open by them is no person.
# Apple Mail Privacy Protection fetches from Apple's 17.0.0.0/8 with a bare "Mozilla/5.0" agent.
_PROXY_AGENTS = re.compile(r"GoogleImageProxy|YahooMailProxy|ggpht\.com|Apple-Mail-Proxy", re.IGNORECASE)
_APPLE_FIRST_BYTE = 17  # Apple's 17.0.0.0/8

# Security gateways and crawlers that follow every link of a message before its reader sees it.
_SCANNER_AGENTS = re.compile(
    # "bot" as a word or a crawler's name ("Googlebot/2.1", "AdsBot-Google"), not inside a phone's model
    # name ("CUBOT X19" in an Android browser's agent).
    r"(?<![a-z])bot\b|bot/|bot-|spider|crawl|scan|preview|python-requests|python-urllib|aiohttp|httpx|curl/|wget/|"
    r"go-http-client|java/|okhttp|libwww|headlesschrome|phantomjs|barracuda|proofpoint|mimecast|"
    r"safelinks|symantec|forcepoint|trendmicro|sophos|fortiguard|cisco|ironport|messagelabs|"
    r"microsoft office|ms-office|facebookexternalhit|slackbot|whatsapp|skypeuripreview",
    re.IGNORECASE,
)


def scanner_seconds() -> int:
    """A click this soon after sending is a gateway scanning the message, not its reader."""
    return getattr(settings, "TRACKING_SCANNER_SECONDS", 10)


def client_facts(request) -> dict:
    """The request's user agent (truncated) and network hash, ready for Event fields."""
    return {
        "user_agent": request.META.get("HTTP_USER_AGENT", "")[:UA_MAX],
        "ip_hash": ip_hash(request.META.get("REMOTE_ADDR", "")),
    }


def _ipv4(address: str) -> bytes | None:
    # inet_pton is C and as strict as ipaddress (no leading zeros, four parts); ipaddress costs ~10 µs.
    try:
        return socket.inet_pton(socket.AF_INET, address)
    except (OSError, ValueError, TypeError):
        return None


def ip_hash(address: str) -> str:
    """HMAC-SHA256 (keyed with SECRET_KEY) of the address's /24 or /48 network; '' if not an address."""
    return _ip_hash(settings.SECRET_KEY, address)


@functools.lru_cache(maxsize=8192)
def _ip_hash(secret_key: str, address: str) -> str:
    # Kept per process: opens and clicks come in bursts from the same mail proxies and scanners, and
    # parsing and hashing cost a third of a buffered open's own work.
    if packed := _ipv4(address):
        network = socket.inet_ntop(socket.AF_INET, packed[:3] + bytes(1)) + "/24"
    else:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return ""
        network = str(ipaddress.ip_network(f"{ip}/{24 if ip.version == 4 else 48}", strict=False))
    return hmac.new(secret_key.encode(), network.encode(), hashlib.sha256).hexdigest()


def _in_apple_network(address: str) -> bool:
    packed = _ipv4(address)
    return packed is not None and packed[0] == _APPLE_FIRST_BYTE


def _agent_flags(user_agent: str) -> tuple[bool, bool]:
    """(an image proxy's agent, a scanner's agent). The scanner pattern costs ~30 µs per search."""
    if len(user_agent) > UA_MAX:
        return _agent_flags_search(user_agent)
    return _agent_flags_cached(user_agent)


def _agent_flags_search(user_agent: str) -> tuple[bool, bool]:
    return bool(_PROXY_AGENTS.search(user_agent)), bool(_SCANNER_AGENTS.search(user_agent))


# Mail clients send few distinct agents: the pixel and the click classify each once per process.
_agent_flags_cached = functools.lru_cache(maxsize=4096)(_agent_flags_search)


def open_machine_reason(*, user_agent: str, address: str) -> str:
    """Why an open is not a person reading ('' if it may be one)."""
    proxy, scanner = _agent_flags(user_agent)
    if proxy:
        return "image proxy"
    if user_agent.strip() == "Mozilla/5.0" or _in_apple_network(address):
        return "apple mail privacy protection"
    if not user_agent:
        return "no user agent"
    if scanner:
        return "scanner agent"
    return ""


def click_request_reason(*, method: str, user_agent: str) -> str:
    """What the request alone says about a click: a HEAD, no agent or a scanner's agent ('' if none)."""
    if method == "HEAD":
        return "head request"
    if not user_agent:
        return "no user agent"
    if any(_agent_flags(user_agent)):
        return "scanner agent"
    return ""


def click_machine_reason(
    *,
    method: str,
    user_agent: str,
    is_honeypot: bool,
    sent_at: dt.datetime | None,
    now: dt.datetime,
) -> str:
    """Why a click is not a person clicking ('' if it may be one). _CLICK_SQL applies the same order."""
    if is_honeypot:
        return "honeypot link"
    if reason := click_request_reason(method=method, user_agent=user_agent):
        return reason
    if sent_at is not None and now - sent_at < dt.timedelta(seconds=scanner_seconds()):
        return "click too soon after delivery"
    return ""


def event_record(
    *,
    kind: str,
    message_id: int,
    customer_id: int,
    campaign_id: int | None = None,
    offer_id: int | None = None,
    request=None,
    machine_reason: str = "",
    occurred_at: dt.datetime | None = None,
    meta: dict | None = None,
) -> Event:
    """One INSERT: the event, with the request's facts when there is a request (and its first touch)."""
    facts = client_facts(request) if request is not None else {}
    event = Event(
        kind=kind,
        message_id=message_id,
        campaign_id=campaign_id,
        offer_id=offer_id,
        customer_id=customer_id,
        occurred_at=occurred_at or timezone.now(),
        is_machine=bool(machine_reason),
        machine_reason=machine_reason[:100],
        meta=meta or {},
        **facts,
    )
    event.save(force_insert=True)
    return event


def _first_touch_kinds() -> dict[str, list[str]]:
    """Message column → the event kinds whose earliest occurrence it holds."""
    kinds: dict[str, list[str]] = {}
    for kind, fields in Event.FIRST_TOUCH.items():
        for field in fields:
            kinds.setdefault(field, []).append(kind)
    return kinds


def messages_first_touch_refresh(*, message_ids) -> None:
    """Recompute the messages' first-touch columns from their events (after a bulk insert of events)."""
    messages = Message.objects.filter(pk__in=message_ids)
    for field, kinds in _first_touch_kinds().items():
        human = Q(is_machine=False) | ~Q(kind__in=Event.HUMAN_ONLY)
        first = (
            Event.objects.filter(human, message=OuterRef("pk"), kind__in=kinds)
            .values("message")
            .annotate(t=Min("occurred_at"))
            .values("t")
        )
        messages.update(**{field: Subquery(first)})


def customer_suppress(*, customer_id: int, reason: str, now: dt.datetime | None = None) -> bool:
    """Suppress a customer unless already suppressed (the first reason stays). True if this changed it."""
    return bool(
        Customer.objects.filter(pk=customer_id, suppressed_reason="").update(
            suppressed_reason=reason, suppressed_at=now or timezone.now()
        )
    )


# -------------------------------------------------------------------- PostgreSQL: one round trip each

# The pixel and the click redirect are the hot paths. On PostgreSQL each is one statement: find the row
# by token (not expired), insert the event, commit without waiting for the WAL flush (set_config(...,
# true) is local to the statement's own transaction), and for a click return the stored URL.
# A person's open or click also moves the message's first-touch columns (Event.FIRST_TOUCH) back to now,
# in the same statement; a later open finds them set and updates nothing.
_EVENT_INSERT = """
INSERT INTO campaigns_event (kind, message_id, campaign_id, offer_id, customer_id, occurred_at, user_agent,
                             ip_hash, is_machine, machine_reason, is_simulated, meta)
SELECT %(kind)s, hit.message_id, hit.campaign_id, hit.offer_id, hit.customer_id, %(now)s, %(user_agent)s,
       %(ip_hash)s, hit.reason <> '', hit.reason, false, '{}'::jsonb
FROM hit, (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit
"""
_OPEN_SQL = (
    """
WITH hit AS (
  SELECT id AS message_id, campaign_id, NULL::bigint AS offer_id, customer_id, %(reason)s::varchar AS reason
  FROM campaigns_message WHERE token = %(token)s AND COALESCE(sent_at, created_at) >= %(oldest)s
), touched AS (
  UPDATE campaigns_message m SET opened_at = %(now)s FROM hit
  WHERE m.id = hit.message_id AND hit.reason = '' AND (m.opened_at IS NULL OR m.opened_at > %(now)s)
)"""
    + _EVENT_INSERT
)
# Where a click's token is found, by the route it came in on. A link of the marketer's own has a row of
# its own (TrackedLink); an offer's link is the offer's token and leads to the URL stored with it; the
# hidden honeypot link is the message's token and leads to the site. So an email of 3 offers stores no
# link rows at all: 4 rows, their index entries and foreign-key checks fewer per email (bench/README.md).
# Each source gives the columns token, url, message_id, offer_id and is_honeypot; click_targets is the
# same in the ORM.
CLICK_SOURCES = {
    "link": "SELECT token, url, message_id, offer_id, is_honeypot FROM campaigns_trackedlink",
    # Offers sent before their URL was kept (url = '') are clicked through their TrackedLink.
    "offer": "SELECT token, url, message_id, id AS offer_id, false AS is_honeypot FROM campaigns_offer"
    " WHERE url <> ''",
    "honeypot": "SELECT token, CAST(%(site)s AS varchar(2000)) AS url, id AS message_id,"
    " CAST(NULL AS bigint) AS offer_id, true AS is_honeypot FROM campaigns_message",
}


def click_from(source: str) -> str:
    """A FROM clause: the source's rows as l, joined to their message as m. Needs the parameter site."""
    return f"({CLICK_SOURCES[source]}) l JOIN campaigns_message m ON m.id = l.message_id"


def honeypot_url() -> str:
    return settings.SITE_URL + "/"


def click_targets(source: str, tokens: list[str]) -> list[dict]:
    """The rows of these tokens in a click source: token, url, message_id, offer_id, is_honeypot and the
    message's campaign_id, customer_id, sent_at, created_at (CLICK_SOURCES in the ORM: the direct click
    on SQLite and the tracking buffer's flush)."""
    if source == "honeypot":
        rows = Message.objects.filter(token__in=tokens)
        return [
            {"token": token, "url": honeypot_url(), "message_id": pk, "offer_id": None, "is_honeypot": True}
            | {"campaign_id": campaign, "customer_id": customer, "sent_at": sent, "created_at": created}
            for token, pk, campaign, customer, sent, created in rows.values_list(
                "token", "pk", "campaign_id", "customer_id", "sent_at", "created_at"
            )
        ]
    if source == "offer":
        rows = Offer.objects.filter(token__in=tokens).exclude(url="").order_by()
        fields, renamed = ["token", "url", "message_id", "pk"], {"pk": "offer_id"}
    elif source == "link":
        rows = TrackedLink.objects.filter(token__in=tokens)
        fields, renamed = ["token", "url", "message_id", "offer_id", "is_honeypot"], {}
    else:
        raise ValueError(f"unknown click source {source!r}")
    for name in ("campaign_id", "customer_id", "sent_at", "created_at"):
        fields.append(f"message__{name}")
        renamed[f"message__{name}"] = name
    return [
        {"is_honeypot": False} | {renamed.get(name, name): value for name, value in row.items()}
        for row in rows.values(*fields)
    ]


_CLICK_SQL = (
    """
WITH hit AS (
  SELECT l.url, l.message_id, m.campaign_id, l.offer_id, m.customer_id,
         CASE WHEN l.is_honeypot THEN 'honeypot link'
              WHEN %(reason)s <> '' THEN %(reason)s
              WHEN m.sent_at > %(too_soon)s THEN 'click too soon after delivery'
              ELSE '' END::varchar AS reason
  FROM {targets}
  WHERE l.token = %(token)s AND COALESCE(m.sent_at, m.created_at) >= %(oldest)s
), touched AS (
  UPDATE campaigns_message m
  SET opened_at = LEAST(m.opened_at, %(now)s), clicked_at = LEAST(m.clicked_at, %(now)s) FROM hit
  WHERE m.id = hit.message_id AND hit.reason = ''
    AND (m.clicked_at IS NULL OR m.clicked_at > %(now)s OR m.opened_at IS NULL OR m.opened_at > %(now)s)
), inserted AS ("""
    + _EVENT_INSERT
    + """  RETURNING id
)
SELECT url FROM hit"""
)
_CLICK_SQLS = {source: _CLICK_SQL.replace("{targets}", click_from(source)) for source in CLICK_SOURCES}


def open_record_pg(*, token: str, request, reason: str, now: dt.datetime, oldest: dt.datetime) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            _OPEN_SQL,
            {"kind": "open", "token": token, "reason": reason, "now": now, "oldest": oldest}
            | client_facts(request),
        )


def click_record_pg(*, source: str, token: str, request, now: dt.datetime, oldest: dt.datetime) -> str | None:
    """The link's stored URL (None if unknown or expired), the click recorded."""
    params = {
        "kind": "click",
        "token": token,
        "site": honeypot_url(),
        "reason": click_request_reason(
            method=request.method, user_agent=request.META.get("HTTP_USER_AGENT", "")
        ),
        "too_soon": now - dt.timedelta(seconds=scanner_seconds()),
        "now": now,
        "oldest": oldest,
    } | client_facts(request)
    with connection.cursor() as cursor:
        cursor.execute(_CLICK_SQLS[source], params)
        row = cursor.fetchone()
    return row[0] if row else None


# ------------------------------------------------------------------------------------------ ESP events

# anymail's normalised event types → our event kind and the suppression it implies. "deferred" (a
# temporary failure the ESP retries) and "rejected" (the ESP refused to send) are not bounces.
_ESP_KINDS = {
    "delivered": (Event.Kind.DELIVERED, ""),
    "bounced": (Event.Kind.BOUNCE, Customer.Suppression.BOUNCED),
    "complained": (Event.Kind.COMPLAINT, Customer.Suppression.COMPLAINED),
    "unsubscribed": (Event.Kind.UNSUBSCRIBE, Customer.Suppression.UNSUBSCRIBED),
}


def _esp_message(event) -> Message | None:
    token = (event.metadata or {}).get("xsell_message")
    if token:
        found = (
            Message.objects.filter(token=str(token)).only("pk", "customer_id", "campaign_id", "error").first()
        )
        if found is not None:
            return found
    message_id = (event.message_id or "").strip().strip("<>")
    if not message_id:
        return None
    return (
        Message.objects.filter(message_id__in=[message_id, f"<{message_id}>"])
        .only("pk", "customer_id", "campaign_id", "error")
        .first()
    )


def esp_event_record(*, event, esp_name: str = "") -> Event | None:
    """Record an ESP's delivered / bounced / complained / unsubscribed event and suppress accordingly.

    Idempotent per ESP event id: webhooks are retried. Events for messages we do not know are ignored.
    """
    kind, suppression = _ESP_KINDS.get(event.event_type, (None, ""))
    if kind is None:
        return None
    message = _esp_message(event)
    if message is None:
        return None
    event_id = str(event.event_id or "")
    if event_id and Event.objects.filter(message=message, kind=kind, meta__esp_event_id=event_id).exists():
        return None
    now = timezone.now()
    with transaction.atomic():
        if suppression:
            customer_suppress(customer_id=message.customer_id, reason=suppression, now=now)
        if kind == Event.Kind.BOUNCE:
            detail = event.mta_response or event.description or event.reject_reason or "bounced"
            Message.objects.filter(pk=message.pk).update(error=f"{esp_name} bounce: {detail}"[:2000])
        return Event.objects.create(
            kind=kind,
            message_id=message.pk,
            campaign_id=message.campaign_id,
            customer_id=message.customer_id,
            occurred_at=event.timestamp or now,
            user_agent=(event.user_agent or "")[:UA_MAX],
            meta={
                "esp": esp_name,
                "esp_event_id": event_id,
                "reject_reason": event.reject_reason or "",
                "description": (event.description or "")[:300],
            },
        )


def esp_tracking_receiver(sender, event, esp_name, **kwargs) -> None:
    """anymail.signals.tracking receiver (connected in CampaignsConfig.ready)."""
    esp_event_record(event=event, esp_name=esp_name)
