"""ESP events through anymail: delivered, bounced, complained, unsubscribed update the message and suppress."""

import base64
import json

import pytest
from anymail.signals import AnymailTrackingEvent, tracking
from django.utils import timezone

from campaigns.models import Event, Message
from customers.models import Customer
from tests.test_tracking import sent_message


def send_event(event_type, *, message=None, message_id=None, event_id="ev-1", **extra):
    event = AnymailTrackingEvent(
        event_type=event_type,
        timestamp=timezone.now(),
        event_id=event_id,
        message_id=message_id,
        metadata={"xsell_message": message.token} if message is not None else {},
        recipient="ann@example.com",
        **extra,
    )
    tracking.send(sender=object, event=event, esp_name="TestESP")


def reason(message):
    return Customer.objects.get(pk=message.customer_id).suppressed_reason


@pytest.mark.django_db
def test_hard_bounce_suppresses_and_records():
    msg, _ = sent_message()
    send_event("bounced", message=msg, reject_reason="bounced", mta_response="550 5.1.1 no such user")
    assert reason(msg) == "bounced"
    event = Event.objects.get()
    assert (event.kind, event.message_id, event.meta["esp"]) == ("bounce", msg.pk, "TestESP")
    assert "5.1.1" in Message.objects.get(pk=msg.pk).error


@pytest.mark.django_db
def test_deferred_is_not_a_bounce_and_delivered_only_records():
    msg, _ = sent_message()
    send_event("deferred", message=msg)
    send_event("delivered", message=msg, event_id="ev-2")
    assert reason(msg) == ""
    assert list(Event.objects.values_list("kind", flat=True)) == ["delivered"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("event_type", "kind", "suppression"),
    [("complained", "complaint", "complained"), ("unsubscribed", "unsubscribe", "unsubscribed")],
)
def test_complaint_and_unsubscribe_suppress(event_type, kind, suppression):
    msg, _ = sent_message()
    send_event(event_type, message=msg)
    assert reason(msg) == suppression
    assert Event.objects.get().kind == kind


@pytest.mark.django_db
def test_found_by_message_id_and_replays_are_ignored():
    msg, _ = sent_message()
    Message.objects.filter(pk=msg.pk).update(message_id="<abc.123@shop.example>")
    send_event("complained", message_id="abc.123@shop.example", event_id="same")
    send_event("complained", message_id="<abc.123@shop.example>", event_id="same")
    assert Event.objects.filter(kind="complaint", message=msg).count() == 1
    assert reason(msg) == "complained"
    send_event("bounced", message_id="<unknown@shop.example>", event_id="other")
    assert Event.objects.count() == 1


@pytest.mark.django_db
def test_postmark_webhook_end_to_end(client, settings):
    settings.ANYMAIL = {"WEBHOOK_SECRET": "hook:secret"}
    msg, _ = sent_message()
    payload = {
        "RecordType": "Bounce",
        "Type": "HardBounce",
        "TypeCode": 1,
        "ID": 4323372036854775807,
        "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
        "Email": "ann@example.com",
        "BouncedAt": "2026-11-01T10:00:00Z",
        "Description": "The server was unable to deliver your message",
        "Details": "smtp;550 5.1.1 The email account does not exist.",
        "Metadata": {"xsell_message": msg.token},
    }
    path = "/esp/postmark/tracking/"
    assert client.post(path, json.dumps(payload), content_type="application/json").status_code == 400
    assert reason(msg) == ""  # anymail refused the unsigned call before any signal
    auth = "Basic " + base64.b64encode(b"hook:secret").decode()
    response = client.post(
        path, json.dumps(payload), content_type="application/json", HTTP_AUTHORIZATION=auth
    )
    assert response.status_code == 200
    assert reason(msg) == "bounced"
    assert Event.objects.get().kind == "bounce"
