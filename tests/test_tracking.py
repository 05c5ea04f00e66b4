"""Recipients' endpoints: tokens, redirects, the pixel, accept, unsubscribe, preferences, machine traffic."""

import datetime as dt
import threading
from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from campaigns.models import Campaign, EmailTemplate, Event, Message, Offer, TrackedLink
from campaigns.rendering import money
from campaigns.sending import with_utm
from campaigns.tokens import purpose_token
from campaigns.tracking import PIXEL
from customers.models import Customer, Product

UTM = "ref=mail&utm_source=xsell&utm_medium=email&utm_campaign=spring"
HUMAN_UA = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"


def sent_message(*, email="ann@example.com", sent_ago=dt.timedelta(hours=2), status=Message.Status.SENT, n=2):
    """A customer, a campaign, a sent message with n offers (their links lead to their stored URLs) and
    a link of the marketer's own (a TrackedLink)."""
    now = timezone.now()
    customer = Customer.objects.create(
        external_id=f"c-{email}", email=email, first_name="Ann", marketing_consent=True, consent_at=now
    )
    template, _ = EmailTemplate.objects.get_or_create(
        name="t", defaults={"subject": "Hi", "html": "<p>hi</p>", "text": "hi"}
    )
    campaign, _ = Campaign.objects.get_or_create(
        name="Spring", defaults={"template": template, "utm_campaign": "spring"}
    )
    message = Message.objects.create(
        campaign=campaign,
        customer=customer,
        status=status,
        sent_at=now - sent_ago if status == Message.Status.SENT else None,
    )
    offers = []
    for rank in range(1, n + 1):
        product, _ = Product.objects.get_or_create(
            sku=f"SKU{rank}",
            defaults={
                "name": f"Product {rank}",
                "price": Decimal("9.50"),
                "currency": "EUR",
                "product_url": f"https://shop.example/p/{rank}?ref=mail",
            },
        )
        if status == Message.Status.SENT:
            offer = Offer.objects.create(
                message=message,
                product=product,
                rank=rank,
                score=0.5,
                reason="Goes well",
                url=with_utm(product.product_url, campaign),  # as a send stores it
            )
            offers.append(offer)
    TrackedLink.objects.create(message=message, url="https://shop.example/help")
    return message, offers


def url(name, token, purpose=None):
    return reverse(name, kwargs={"token": purpose_token(token, purpose or name)})


def offer_url(offer):
    return url("track-offer", offer.token, "offer-click")


def honeypot_url(message):
    return url("track-honeypot", message.token, "honeypot")


def legacy_offer(offer):
    """The offer as sent before offers kept their URLs: no URL of its own, a TrackedLink to click."""
    Offer.objects.filter(pk=offer.pk).update(url="")
    return TrackedLink.objects.create(
        message=offer.message, offer=offer, url=f"https://shop.example/old/{offer.rank}"
    )


@pytest.fixture
def message():
    return sent_message()


# ------------------------------------------------------------------------------------------ tokens


def _bad_tokens(row_token, purpose="click"):
    good = purpose_token(row_token, purpose)
    return [
        good[:-1] + ("A" if good[-1] != "A" else "B"),  # tampered mac
        "x" + good,  # tampered row token
        purpose_token("unknownunknownunknown", purpose),  # well signed, unknown row
        purpose_token(row_token, "open"),  # wrong purpose
        row_token,  # no mac at all
        good[:-1] + "é",  # a mac that is not ASCII
    ]


@pytest.mark.django_db
def test_bad_click_tokens_are_404_and_record_nothing(client, message):
    msg, offers = message
    for bad in _bad_tokens(offers[0].token, "offer-click"):
        response = client.get(reverse("track-offer", kwargs={"token": bad}), HTTP_USER_AGENT=HUMAN_UA)
        assert response.status_code == 404, bad
    assert not Event.objects.exists()


@pytest.mark.django_db
def test_pixel_is_the_same_gif_for_known_unknown_and_tampered_tokens(client, message):
    msg, _ = message
    good = purpose_token(msg.token, "open")
    bad = [good[:-2] + "zz", purpose_token("nosuchmessage", "open"), purpose_token(msg.token, "click")]
    bad.append(good[:-1] + "é")  # not ASCII
    bodies = []
    for token in bad:
        response = client.get(reverse("track-open", kwargs={"token": token}), HTTP_USER_AGENT=HUMAN_UA)
        assert response.status_code == 200
        assert response["Content-Type"] == "image/gif"
        assert "no-store" in response["Cache-Control"]
        bodies.append(response.content)
    assert not Event.objects.exists()
    response = client.get(reverse("track-open", kwargs={"token": good}), HTTP_USER_AGENT=HUMAN_UA)
    assert bodies == [response.content] * 4 and response.content == PIXEL and len(PIXEL) == 43
    event = Event.objects.get()
    assert (event.kind, event.message_id, event.is_machine) == ("open", msg.pk, False)
    assert event.user_agent == HUMAN_UA and len(event.ip_hash) == 64 and "127.0.0" not in event.ip_hash


@pytest.mark.django_db
def test_click_redirects_to_the_stored_url_only(client, message):
    msg, offers = message
    response = client.get(offer_url(offers[0]), HTTP_USER_AGENT=HUMAN_UA)
    assert response.status_code == 302
    assert response["Location"] == offers[0].url == "https://shop.example/p/1?" + UTM
    event = Event.objects.get()
    assert (event.kind, event.offer_id, event.is_machine) == ("click", offers[0].pk, False)


@pytest.mark.django_db
def test_each_kind_of_link_leads_to_its_own_url_and_records_its_click(client, message, settings):
    msg, offers = message
    link = msg.links.get()
    old = legacy_offer(offers[1])  # its email is out: its TrackedLink keeps working
    clicks = [
        (url("track-click", link.token, "click"), "https://shop.example/help", None, ""),
        (url("track-click", old.token, "click"), "https://shop.example/old/2", offers[1].pk, ""),
        (offer_url(offers[0]), offers[0].url, offers[0].pk, ""),
        (honeypot_url(msg), settings.SITE_URL + "/", None, "honeypot link"),
    ]
    for path, location, offer_id, reason in clicks:
        response = client.get(path, HTTP_USER_AGENT=HUMAN_UA)
        assert (response.status_code, response["Location"]) == (302, location), path
        event = Event.objects.order_by("-pk").first()
        assert (event.message_id, event.offer_id, event.machine_reason) == (msg.pk, offer_id, reason), path
    assert Event.objects.filter(kind="click").count() == 4


@pytest.mark.django_db
def test_a_token_is_only_a_link_on_its_own_route(client, message):
    msg, offers = message
    link = msg.links.get()
    wrong = [
        ("track-click", offers[0].token, "click"),  # an offer is not a TrackedLink
        ("track-click", msg.token, "click"),
        ("track-offer", link.token, "offer-click"),
        ("track-offer", msg.token, "offer-click"),
        ("track-honeypot", offers[0].token, "honeypot"),
        ("track-offer", offers[0].token, "click"),  # well formed, signed for another purpose
        ("track-honeypot", msg.token, "open"),
    ]
    for name, token, purpose in wrong:
        assert client.get(url(name, token, purpose), HTTP_USER_AGENT=HUMAN_UA).status_code == 404, name
    legacy_offer(offers[1])  # an offer without a URL of its own has no offer link (it has a TrackedLink)
    assert client.get(offer_url(offers[1]), HTTP_USER_AGENT=HUMAN_UA).status_code == 404
    assert not Event.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "suffix",
    ["//evil.example", "/https:\\\\evil.example", "?next=https://evil.example", "/../../evil.example"],
)
def test_open_redirect_attempts_fail(client, message, suffix):
    msg, offers = message
    path = offer_url(offers[0])
    response = client.get(path + suffix, HTTP_USER_AGENT=HUMAN_UA)
    if response.status_code == 302:  # a query string is ignored: still the stored URL
        assert response["Location"] == offers[0].url
    else:
        assert response.status_code == 404
    assert "evil" not in response.get("Location", "")


@pytest.mark.django_db
def test_click_on_an_edited_destination_is_404(client, message):
    msg, offers = message
    link = msg.links.get()
    TrackedLink.objects.filter(pk=link.pk).update(url="https://shop.example/changed")
    response = client.get(url("track-click", link.token, "click"), HTTP_USER_AGENT=HUMAN_UA)
    assert response["Location"] == "https://shop.example/changed"  # the database decides, not the link
    Offer.objects.filter(pk=offers[0].pk).update(url="https://shop.example/offer-changed")
    assert client.get(offer_url(offers[0]), HTTP_USER_AGENT=HUMAN_UA)["Location"].endswith("/offer-changed")


@pytest.mark.django_db
def test_expired_tokens_are_404_but_unsubscribe_still_works(client):
    msg, offers = sent_message(sent_ago=dt.timedelta(days=400))
    assert client.get(offer_url(offers[0])).status_code == 404
    assert client.get(url("offers", msg.token)).status_code == 404
    assert client.post(url("accept", offers[0].token)).status_code == 404
    assert client.get(url("track-open", msg.token, "open")).content == PIXEL
    assert not Event.objects.exists()
    assert client.post(url("unsubscribe", msg.token)).status_code == 200
    assert Customer.objects.get(pk=msg.customer_id).suppressed_reason == "unsubscribed"


# ----------------------------------------------------------------------------------- machine traffic


@pytest.mark.django_db
def test_machine_opens_are_flagged(client, message):
    msg, _ = message
    path = url("track-open", msg.token, "open")
    client.get(path, HTTP_USER_AGENT="Mozilla/5.0")  # Apple MPP prefetch
    client.get(path, HTTP_USER_AGENT=HUMAN_UA, REMOTE_ADDR="17.58.100.1")  # Apple's proxy network
    client.get(
        path,
        HTTP_USER_AGENT="Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
    )
    client.get(path, HTTP_USER_AGENT=HUMAN_UA)
    events = Event.objects.filter(kind="open")
    assert events.count() == 4
    assert events.filter(is_machine=False).count() == 1
    assert set(events.filter(is_machine=True).values_list("machine_reason", flat=True)) == {
        "apple mail privacy protection",
        "image proxy",
    }


@pytest.mark.django_db
def test_scanner_clicks_are_flagged_and_excluded_from_human_counts(client):
    msg, offers = sent_message()
    path = offer_url(offers[0])
    assert client.head(path, HTTP_USER_AGENT=HUMAN_UA).status_code == 302
    client.get(path, HTTP_USER_AGENT="Mozilla/5.0 (compatible; Barracuda Sentinel)")
    client.get(honeypot_url(msg), HTTP_USER_AGENT=HUMAN_UA)
    client.get(path, HTTP_USER_AGENT=HUMAN_UA)
    clicks = Event.objects.filter(kind="click")
    assert clicks.count() == 4
    assert clicks.filter(is_machine=False).count() == 1
    assert set(clicks.filter(is_machine=True).values_list("machine_reason", flat=True)) == {
        "head request",
        "scanner agent",
        "honeypot link",
    }


@pytest.mark.django_db
def test_click_seconds_after_delivery_is_a_scanner(client):
    msg, offers = sent_message(sent_ago=dt.timedelta(seconds=1))
    client.get(offer_url(offers[0]), HTTP_USER_AGENT=HUMAN_UA)
    event = Event.objects.get()
    assert event.is_machine and event.machine_reason == "click too soon after delivery"


# ---------------------------------------------------------------------------------------- offers


@pytest.mark.django_db
def test_offer_page_shows_offers_and_records_nothing(client, message):
    msg, offers = message
    response = client.get(url("offers", msg.token), HTTP_USER_AGENT=HUMAN_UA)
    assert response.status_code == 200
    body = response.content.decode()
    assert "Product 1" in body and "Product 2" in body and "Goes well" in body
    assert money(offers[0].product.price, offers[0].product.currency) == "€9.50"
    assert "€9.50" in body  # as the email shows it, not "9.50 EUR"
    assert url("accept", offers[0].token) in body and 'method="post"' in body
    assert "ann@example.com" not in body
    # No Referer to other sites; our own form POSTs keep their Origin (CSRF).
    assert response["Referrer-Policy"] == "same-origin"
    assert not Event.objects.exists()


@pytest.mark.django_db
def test_get_and_head_on_accept_and_unsubscribe_change_nothing(client, message):
    msg, offers = message
    for path in (url("accept", offers[0].token), url("unsubscribe", msg.token), url("one-click", msg.token)):
        assert client.get(path).status_code == 200
        assert client.head(path).status_code == 200
    assert not Event.objects.exists()
    assert Customer.objects.get(pk=msg.customer_id).suppressed_reason == ""


@pytest.mark.django_db
def test_accept_records_once_and_redirects_with_utm(client, message):
    msg, offers = message
    # Where the offer's link in the email led, stored with it: not the product's URL as it is now.
    Product.objects.filter(pk=offers[0].product_id).update(product_url="https://shop.example/moved")
    path = url("accept", offers[0].token)
    for _ in range(3):
        response = client.post(path, HTTP_USER_AGENT=HUMAN_UA)
        assert response.status_code == 302
    target = urlsplit(response["Location"])
    assert (target.netloc, target.path) == ("shop.example", "/p/1")
    assert parse_qs(target.query) == {
        "ref": ["mail"],
        "utm_source": ["xsell"],
        "utm_medium": ["email"],
        "utm_campaign": ["spring"],
    }
    event = Event.objects.get()
    assert (event.kind, event.offer_id, event.message_id, event.customer_id) == (
        "accept",
        offers[0].pk,
        msg.pk,
        msg.customer_id,
    )


@pytest.mark.django_db
def test_accept_with_wrong_purpose_is_404(client, message):
    msg, offers = message
    assert client.post(url("accept", offers[0].token, "offers")).status_code == 404
    assert client.post(url("accept", msg.token)).status_code == 404  # a message is not an offer
    assert not Event.objects.exists()


@pytest.mark.parametrize(
    "agent, machine",
    [
        ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", True),
        ("AdsBot-Google (+http://www.google.com/adsbot.html)", True),
        ("DuckDuckBot-Https/1.1; (+https://duckduckgo.com/duckduckbot)", True),
        ("Mozilla/5.0 (compatible; link checker bot 1.0)", True),
        ("Mozilla/5.0 (compatible; Barracuda Sentinel (EE))", True),
        (HUMAN_UA, False),
        # A phone whose model name ends in "bot", in an Android app's browser: a person.
        (
            "Mozilla/5.0 (Linux; Android 9; CUBOT X19 Build/PPR1.180610.011; wv) AppleWebKit/537.36 "
            "(KHTML, like Gecko) Version/4.0 Chrome/126.0.6478.71 Mobile Safari/537.36",
            False,
        ),
    ],
)
def test_scanner_agents_are_told_from_peoples_browsers(agent, machine):
    from campaigns.events import click_request_reason

    assert (click_request_reason(method="GET", user_agent=agent) == "scanner agent") is machine


@pytest.mark.django_db
def test_a_machine_submitting_the_accept_form_accepts_nothing_and_leaves_it_to_the_person(client):
    msg, offers = sent_message()
    soon, soon_offers = sent_message(email="soon@example.com", sent_ago=dt.timedelta(seconds=1))
    path = url("accept", offers[0].token)
    for agent in ("Mozilla/5.0 (compatible; Barracuda Sentinel)", ""):
        assert client.post(path, HTTP_USER_AGENT=agent).status_code == 302
    assert client.post(url("accept", soon_offers[0].token), HTTP_USER_AGENT=HUMAN_UA).status_code == 302
    assert not Event.objects.filter(kind="accept").exists()
    machine = Event.objects.filter(kind="click", is_machine=True, meta__via="accept form")
    assert sorted(machine.values_list("offer_id", "machine_reason")) == sorted(
        [
            (offers[0].pk, "scanner agent"),
            (offers[0].pk, "no user agent"),
            (soon_offers[0].pk, "click too soon after delivery"),
        ]
    )
    for m in (msg, soon):
        m.refresh_from_db()
        assert (m.opened_at, m.clicked_at, m.accepted_at) == (None, None, None)
    assert client.get(path, HTTP_USER_AGENT=HUMAN_UA).status_code == 200  # still an offer to accept
    client.post(path, HTTP_USER_AGENT=HUMAN_UA)
    accept = Event.objects.get(kind="accept")
    msg.refresh_from_db()
    assert (accept.offer_id, accept.is_machine, msg.accepted_at) == (offers[0].pk, False, accept.occurred_at)


@pytest.mark.django_db(transaction=True)
def test_concurrent_accepts_record_one_acceptance():
    if connection.vendor != "postgresql":
        pytest.skip("SQLite's in-memory test database fails concurrent writers at once (table locked)")
    msg, offers = sent_message()
    path = url("accept", offers[0].token)
    barrier = threading.Barrier(5)
    statuses = []

    def post():
        try:
            barrier.wait()
            statuses.append(Client().post(path, HTTP_USER_AGENT=HUMAN_UA).status_code)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            statuses.append(repr(exc))
        finally:
            connection.close()  # each thread has its own connection

    threads = [threading.Thread(target=post) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [302] * 5
    assert Event.objects.filter(kind="accept", offer=offers[0]).count() == 1


# ---------------------------------------------------------------------------------- unsubscribe


@pytest.mark.django_db
def test_one_click_without_cookies_or_csrf_suppresses_and_answers_200():
    msg, _ = sent_message()
    client = Client(enforce_csrf_checks=True)
    response = client.post(
        url("one-click", msg.token),
        data="List-Unsubscribe=One-Click",
        content_type="application/x-www-form-urlencoded",
    )
    assert response.status_code == 200 and "Location" not in response
    customer = Customer.objects.get(pk=msg.customer_id)
    assert customer.suppressed_reason == "unsubscribed" and customer.suppressed_at is not None
    assert not customer.is_mailable
    event = Event.objects.get()
    assert (event.kind, event.message_id, event.meta["via"]) == ("unsubscribe", msg.pk, "one-click")
    # A replay keeps the first time and adds no event.
    assert (
        client.post(
            url("one-click", msg.token),
            data="List-Unsubscribe=One-Click",
            content_type="application/x-www-form-urlencoded",
        ).status_code
        == 200
    )
    assert Event.objects.count() == 1
    assert Customer.objects.get(pk=msg.customer_id).suppressed_at == customer.suppressed_at


@pytest.mark.django_db
def test_unsubscribe_post_needs_csrf_but_one_click_token_does_not_unsubscribe_elsewhere():
    msg, _ = sent_message()
    strict = Client(enforce_csrf_checks=True)
    assert strict.post(url("unsubscribe", msg.token)).status_code == 403
    # The one-click token is not valid on the footer link and vice versa.
    assert strict.post(url("one-click", msg.token, "unsubscribe")).status_code == 404
    assert Customer.objects.get(pk=msg.customer_id).suppressed_reason == ""


@pytest.mark.django_db
def test_unsubscribe_confirmation_then_post(client, message):
    msg, _ = message
    page = client.get(url("unsubscribe", msg.token))
    assert b'method="post"' in page.content and b"csrfmiddlewaretoken" in page.content
    response = client.post(url("unsubscribe", msg.token))
    assert response.status_code == 200 and b"You are unsubscribed" in response.content
    assert Customer.objects.get(pk=msg.customer_id).suppressed_reason == "unsubscribed"
    assert Event.objects.get().meta["via"] == "link"
    again = client.get(url("unsubscribe", msg.token))  # the link again: says so, asks nothing
    assert b"You are unsubscribed" in again.content and b'method="post"' not in again.content
    header = client.get(url("one-click", msg.token, "one-click"))  # the header's link, in a browser
    assert b"You are unsubscribed" in header.content and b'method="post"' not in header.content
    stale = client.post(url("preferences", msg.token), {"choice": "stay"})  # a page left open
    assert b"You are unsubscribed" in stale.content and b"Welcome back" not in stale.content


@pytest.mark.django_db
def test_preferences_keep_or_leave(client, message):
    msg, _ = message
    path = url("preferences", msg.token)
    assert b'value="leave"' in client.get(path).content
    assert client.post(path, {"choice": "stay"}).status_code == 200
    assert Customer.objects.get(pk=msg.customer_id).suppressed_reason == ""
    assert client.post(path, {"choice": "leave"}).status_code == 200
    assert Customer.objects.get(pk=msg.customer_id).suppressed_reason == "unsubscribed"
    assert b'value="leave"' not in client.get(path).content


@pytest.mark.django_db
def test_no_customer_data_in_links(message):
    msg, offers = message
    customer = msg.customer
    for name, token, purpose in [
        ("track-open", msg.token, "open"),
        ("offers", msg.token, "offers"),
        ("accept", offers[0].token, "accept"),
        ("unsubscribe", msg.token, "unsubscribe"),
        ("one-click", msg.token, "one-click"),
        ("preferences", msg.token, "preferences"),
    ]:
        path = url(name, token, purpose)
        assert customer.email not in path and f"/{customer.pk}/" not in path
        assert customer.external_id not in path


@pytest.mark.django_db
def test_a_pause_stops_cross_sell_emails_until_it_ends(client, message):
    import datetime as dt

    from django.utils import timezone

    msg, _ = message
    response = client.post(url("preferences", msg.token), {"choice": "pause30"})
    assert response.status_code == 200
    customer = Customer.objects.get(pk=msg.customer_id)
    assert customer.paused_until is not None
    assert 29 <= (customer.paused_until - timezone.now()).days <= 30
    assert not customer.is_mailable and customer.suppressed_reason == ""
    assert not Customer.objects.filter(pk=customer.pk).mailable().exists()
    later = timezone.now() + dt.timedelta(days=31)
    assert Customer.objects.filter(pk=customer.pk).mailable(later).exists()
    page = client.get(url("preferences", msg.token))  # GET changes nothing more, and shows the break
    assert page.status_code == 200 and b"taking a break from our product suggestions until" in page.content
    assert Customer.objects.get(pk=msg.customer_id).paused_until == customer.paused_until
    kept = client.post(url("preferences", msg.token), {})  # Save with nothing chosen: the break stays
    assert b"Nothing changed" in kept.content
    assert Customer.objects.get(pk=msg.customer_id).paused_until == customer.paused_until
    done = client.post(url("preferences", msg.token), {"choice": "stay"})  # ends the break
    assert b"Welcome back" in done.content
    assert Customer.objects.filter(pk=customer.pk, paused_until=None).mailable().exists()
