"""Message first-touch columns and Event.campaign: kept by every path that records events, read by reports."""

import datetime as dt

import pytest
from anymail.signals import AnymailTrackingEvent, tracking
from django.db.models import Min, Q
from django.urls import reverse
from django.utils import timezone

from campaigns.demo import demo_events_simulate
from campaigns.events import messages_first_touch_refresh
from campaigns.models import Event, Message
from campaigns.reports import campaign_report
from campaigns.tokens import purpose_token
from tests.test_tracking import HUMAN_UA, honeypot_url, offer_url, sent_message, url

BOT_UA = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


def _touches(message: Message) -> tuple:
    message.refresh_from_db()
    return message.delivered_at, message.opened_at, message.clicked_at, message.accepted_at


def _pixel(client, message, user_agent=HUMAN_UA):
    token = purpose_token(message.token, "open")
    return client.get(reverse("track-open", kwargs={"token": token}), HTTP_USER_AGENT=user_agent)


@pytest.mark.django_db
def test_pixel_sets_opened_once_and_copies_the_campaign(client):
    message, _ = sent_message()
    _pixel(client, message, user_agent=BOT_UA)
    assert _touches(message) == (None, None, None, None)  # a scanner's open is not a person's
    _pixel(client, message)
    first = Event.objects.get(is_machine=False)
    assert _touches(message) == (None, first.occurred_at, None, None)
    _pixel(client, message)
    assert Event.objects.filter(kind="open").count() == 3
    assert _touches(message)[1] == first.occurred_at  # a later open leaves the first one
    assert set(Event.objects.values_list("campaign_id", flat=True)) == {message.campaign_id}


@pytest.mark.django_db
def test_click_sets_clicked_and_opened_then_accept_sets_accepted(client):
    message, offers = sent_message()
    client.get(honeypot_url(message), HTTP_USER_AGENT=HUMAN_UA)
    assert _touches(message) == (None, None, None, None)
    client.get(offer_url(offers[0]), HTTP_USER_AGENT=HUMAN_UA)
    click = Event.objects.get(kind="click", is_machine=False)
    assert _touches(message) == (None, click.occurred_at, click.occurred_at, None)
    client.post(url("accept", offers[0].token), HTTP_USER_AGENT=HUMAN_UA)
    accept = Event.objects.get(kind="accept")
    assert _touches(message) == (None, click.occurred_at, click.occurred_at, accept.occurred_at)
    assert accept.campaign_id == click.campaign_id == message.campaign_id


@pytest.mark.django_db
def test_an_earlier_event_moves_the_first_touch_back(client):
    message, _ = sent_message()
    _pixel(client, message)
    later = _touches(message)[1]
    earlier = later - dt.timedelta(hours=1)
    # An event recorded late (e.g. imported) with an earlier time: the column keeps the earliest.
    Event.objects.create(kind="click", message=message, customer=message.customer, occurred_at=earlier)
    assert _touches(message) == (None, earlier, earlier, None)
    event = Event.objects.get(kind="click")
    assert event.campaign_id == message.campaign_id


@pytest.mark.django_db
def test_esp_delivered_sets_delivered_at():
    message, _ = sent_message()
    when = timezone.now() - dt.timedelta(minutes=5)
    event = AnymailTrackingEvent(
        event_type="delivered", timestamp=when, event_id="ev-1", metadata={"xsell_message": message.token}
    )
    tracking.send(sender=object, event=event, esp_name="Test")
    assert _touches(message) == (when, None, None, None)
    assert Event.objects.get().campaign_id == message.campaign_id


@pytest.mark.django_db
def test_refresh_after_a_bulk_insert_matches_the_events():
    message, offers = sent_message()
    t0 = timezone.now() - dt.timedelta(hours=1)
    common = {"message": message, "campaign_id": message.campaign_id, "customer": message.customer}
    Event.objects.bulk_create(
        [
            Event(kind="open", occurred_at=t0, is_machine=True, **common),
            Event(kind="open", occurred_at=t0 + dt.timedelta(minutes=3), **common),
            Event(kind="click", occurred_at=t0 + dt.timedelta(minutes=2), **common),
            Event(kind="click", occurred_at=t0 + dt.timedelta(minutes=1), is_machine=True, **common),
            Event(kind="accept", offer=offers[0], occurred_at=t0 + dt.timedelta(minutes=9), **common),
            Event(kind="delivered", occurred_at=t0 + dt.timedelta(minutes=8), **common),
        ]
    )
    assert _touches(message) == (None, None, None, None)  # bulk_create skips Event.save
    messages_first_touch_refresh(message_ids=[message.pk])
    minute = dt.timedelta(minutes=1)
    assert _touches(message) == (t0 + 8 * minute, t0 + 2 * minute, t0 + 2 * minute, t0 + 9 * minute)


@pytest.mark.django_db
def test_demo_simulation_report_agrees_with_its_events():
    """The report's funnel (from first touches) equals the same figures counted from the events."""
    first, _ = sent_message(email="a@example.com")
    campaign = first.campaign
    for i in range(40):
        sent_message(email=f"r{i}@example.com")
    demo_events_simulate(campaign=campaign, seed=3)
    events = Event.objects.filter(message__campaign=campaign, message__status="sent")
    human = Q(is_machine=False)
    opened = events.filter(human, kind__in=["open", "click"]).values("message").distinct().count()
    clicked = events.filter(human, kind="click").values("message").distinct().count()
    accepted = events.filter(kind="accept").values("message").distinct().count()
    assert opened > 0 and clicked > 0
    counts = campaign_report(campaign=campaign)["counts"]
    assert (counts["opened"], counts["clicked"], counts["accepted"]) == (opened, clicked, accepted)
    assert not Event.objects.filter(message__isnull=False, campaign__isnull=True).exists()
    firsts = dict(
        events.filter(human, kind__in=["open", "click"]).values_list("message").annotate(t=Min("occurred_at"))
    )
    assert dict(Message.objects.filter(pk__in=firsts).values_list("pk", "opened_at")) == firsts
