"""Write-behind tracking (TRACKING_BUFFER): opens and clicks queued in Redis, written by the flush task."""

import atexit
import datetime as dt
import hashlib
import hmac
import ipaddress
import os
import subprocess
import sys
import time

import pytest
from django.urls import reverse

from campaigns import tracking_buffer
from campaigns.events import ip_hash
from campaigns.models import Event, Message, TrackedLink
from campaigns.tasks import tracking_flush
from campaigns.tokens import purpose_token
from campaigns.tracking import PIXEL
from tests.test_tracking import HUMAN_UA, honeypot_url, legacy_offer, offer_url, sent_message, url

needs_redis = pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="needs Redis (REDIS_URL)")


@pytest.fixture
def buffered(settings):
    settings.TRACKING_BUFFER = True
    settings.REDIS_URL = os.environ["REDIS_URL"]
    client = tracking_buffer.buffer_client()
    pusher = tracking_buffer._pusher(settings.REDIS_URL)
    pusher.confirm()  # nothing of an earlier test's left to send
    pusher._retry_at = 0.0
    _clear(client)
    yield client
    _clear(client)


def _clear(client) -> None:
    client.delete(tracking_buffer.QUEUE, tracking_buffer.FLUSHING)
    for key in client.scan_iter(tracking_buffer.LINK_PREFIX + "*"):
        client.delete(key)


def _queued(client) -> int:
    tracking_buffer._pusher(os.environ["REDIS_URL"]).confirm()  # this process's batch sent
    return client.llen(tracking_buffer.QUEUE)


def _touches(message: Message) -> tuple:
    message.refresh_from_db()
    return message.opened_at, message.clicked_at


@needs_redis
@pytest.mark.django_db
def test_pixel_and_click_are_recorded_by_the_flush(client, buffered):
    message, offers = sent_message()
    assert client.get(url("track-open", message.token, "open"), HTTP_USER_AGENT=HUMAN_UA).content == PIXEL
    response = client.get(offer_url(offers[0]), HTTP_USER_AGENT=HUMAN_UA)
    assert (response.status_code, response["Location"]) == (302, offers[0].url)
    assert _queued(buffered) == 2 and not Event.objects.exists()
    assert _touches(message) == (None, None)

    assert tracking_flush.delay().get() == 2
    assert _queued(buffered) == 0
    opened = Event.objects.get(kind="open")
    clicked = Event.objects.get(kind="click")
    assert (opened.message_id, opened.campaign_id, opened.customer_id, opened.offer_id) == (
        message.pk,
        message.campaign_id,
        message.customer_id,
        None,
    )
    assert (clicked.message_id, clicked.offer_id, clicked.is_machine) == (message.pk, offers[0].pk, False)
    assert opened.user_agent == HUMAN_UA and len(opened.ip_hash) == 64 and opened.meta == {}
    assert opened.occurred_at < clicked.occurred_at
    assert _touches(message) == (opened.occurred_at, clicked.occurred_at)


@needs_redis
@pytest.mark.django_db
def test_each_kind_of_link_is_recorded_by_the_flush(client, buffered, settings):
    message, offers = sent_message(n=3)
    old = legacy_offer(offers[1])
    clicks = [
        (url("track-click", message.links.get(offer=None).token, "click"), "https://shop.example/help"),
        (url("track-click", old.token, "click"), "https://shop.example/old/2"),
        (offer_url(offers[0]), offers[0].url),
        (honeypot_url(message), settings.SITE_URL + "/"),
    ]
    for path, location in clicks:
        response = client.get(path, HTTP_USER_AGENT=HUMAN_UA)
        assert (response.status_code, response["Location"]) == (302, location), path
    # Well signed, on the wrong route: never found (an offer without a URL is clicked through its link).
    for path in (url("track-offer", message.token, "offer-click"), offer_url(offers[1])):
        assert client.get(path, HTTP_USER_AGENT=HUMAN_UA).status_code == 404
    assert tracking_flush.delay().get() == 4
    assert sorted(Event.objects.values_list("offer_id", "machine_reason"), key=str) == sorted(
        [(None, ""), (offers[1].pk, ""), (offers[0].pk, ""), (None, "honeypot link")], key=str
    )
    assert set(Event.objects.values_list("message_id", "campaign_id", "customer_id")) == {
        (message.pk, message.campaign_id, message.customer_id)
    }


@needs_redis
@pytest.mark.django_db
def test_click_reads_the_database_once_then_the_cache(client, buffered, settings):
    message, offers = sent_message()
    link = message.links.get()
    TrackedLink.objects.filter(pk=link.pk).update(url="https://shop.example/changed")
    path = url("track-click", link.token, "click")
    assert client.get(path, HTTP_USER_AGENT=HUMAN_UA)["Location"] == "https://shop.example/changed"
    # The link is gone (its message deleted): the cached URL still answers, the flush records nothing.
    message.delete()
    assert client.get(path, HTTP_USER_AGENT=HUMAN_UA)["Location"] == "https://shop.example/changed"
    assert tracking_flush.delay().get() == 0
    # The cache keeps the sending time, so links still expire.
    other, other_offers = sent_message(email="other@example.com", sent_ago=dt.timedelta(days=2))
    path = offer_url(other_offers[0])
    assert client.get(path, HTTP_USER_AGENT=HUMAN_UA).status_code == 302
    assert tracking_flush.delay().get() == 1
    settings.TRACKING_TOKEN_DAYS = 1
    assert client.get(path, HTTP_USER_AGENT=HUMAN_UA).status_code == 404
    assert tracking_flush.delay().get() == 0


@needs_redis
@pytest.mark.django_db
def test_tampered_unknown_and_expired_tokens_are_never_recorded(client, buffered):
    message, offers = sent_message()
    old, old_offers = sent_message(email="old@example.com", sent_ago=dt.timedelta(days=400))
    good = purpose_token(message.token, "open")
    for token in (good[:-2] + "zz", "x" + good, purpose_token(message.token, "click"), message.token):
        assert client.get(reverse("track-open", kwargs={"token": token})).content == PIXEL
    offer = offers[0].token
    for token in (purpose_token(offer, "offer-click")[:-1] + "A", purpose_token(offer, "click"), offer):
        assert client.get(reverse("track-offer", kwargs={"token": token})).status_code == 404
    assert _queued(buffered) == 0  # a bad MAC queues nothing

    # Well signed but unknown, or expired: queued, then dropped by the flush.
    client.get(url("track-open", "nosuchmessage", "open"), HTTP_USER_AGENT=HUMAN_UA)
    client.get(url("track-open", old.token, "open"), HTTP_USER_AGENT=HUMAN_UA)
    assert client.get(url("track-click", "nosuchlink", "click")).status_code == 404
    assert client.get(offer_url(old_offers[0])).status_code == 404
    assert _queued(buffered) == 4
    assert tracking_flush.delay().get() == 0
    assert not Event.objects.exists() and _queued(buffered) == 0


@needs_redis
@pytest.mark.django_db
def test_machine_traffic_is_flagged_and_moves_no_first_touch(client, buffered):
    message, offers = sent_message()
    soon, soon_offers = sent_message(email="soon@example.com", sent_ago=dt.timedelta(seconds=1))
    pixel = url("track-open", message.token, "open")
    click = offer_url(offers[0])
    client.get(pixel, HTTP_USER_AGENT="Mozilla/5.0")
    client.get(pixel, HTTP_USER_AGENT=HUMAN_UA, REMOTE_ADDR="17.58.100.1")
    client.get(pixel, HTTP_USER_AGENT="Mozilla/5.0 (via ggpht.com GoogleImageProxy)")
    client.head(pixel, HTTP_USER_AGENT=HUMAN_UA)
    client.head(click, HTTP_USER_AGENT=HUMAN_UA)
    client.get(click, HTTP_USER_AGENT="Mozilla/5.0 (compatible; Barracuda Sentinel)")
    client.get(honeypot_url(message), HTTP_USER_AGENT=HUMAN_UA)
    client.get(offer_url(soon_offers[0]), HTTP_USER_AGENT=HUMAN_UA)
    assert tracking_flush.delay().get() == 8
    reasons = sorted(Event.objects.values_list("kind", "machine_reason"))
    assert reasons == [
        ("click", "click too soon after delivery"),
        ("click", "head request"),
        ("click", "honeypot link"),
        ("click", "scanner agent"),
        ("open", "apple mail privacy protection"),
        ("open", "apple mail privacy protection"),
        ("open", "head request"),
        ("open", "image proxy"),
    ]
    assert not Event.objects.filter(is_machine=False).exists()
    assert _touches(message) == (None, None) and _touches(soon) == (None, None)


@needs_redis
@pytest.mark.django_db
def test_flush_that_crashed_after_writing_is_retried_without_duplicates(client, buffered):
    message, offers = sent_message()
    pixel = url("track-open", message.token, "open")
    for _ in range(3):
        client.get(pixel, HTTP_USER_AGENT=HUMAN_UA)
    # A flush that wrote its chunk and died before forgetting it (the worker was killed).
    tracking_buffer._pusher(os.environ["REDIS_URL"]).confirm()
    take = buffered.register_script(tracking_buffer._TAKE)
    chunk = take(keys=[tracking_buffer.QUEUE, tracking_buffer.FLUSHING], args=[100])
    assert tracking_buffer._chunk_write(chunk) == 3
    assert buffered.llen(tracking_buffer.FLUSHING) == 3
    client.get(pixel, HTTP_USER_AGENT=HUMAN_UA)  # one more while it was down

    assert tracking_buffer.tracking_buffer_flush() == 1
    assert Event.objects.filter(kind="open").count() == 4
    assert buffered.llen(tracking_buffer.FLUSHING) == 0 and _queued(buffered) == 0
    assert tracking_buffer.tracking_buffer_flush() == 0
    assert Event.objects.count() == 4
    first = Event.objects.order_by("occurred_at").first()
    assert _touches(message)[0] == first.occurred_at


@needs_redis
@pytest.mark.django_db
def test_flush_drains_in_chunks(client, buffered):
    message, offers = sent_message()
    for _ in range(5):
        client.get(url("track-open", message.token, "open"), HTTP_USER_AGENT=HUMAN_UA)
        client.get(offer_url(offers[1]), HTTP_USER_AGENT=HUMAN_UA)
    assert tracking_buffer.tracking_buffer_flush(chunk=3, max_chunks=2) == 6
    assert _queued(buffered) == 4
    assert tracking_buffer.tracking_buffer_flush(chunk=3) == 4
    assert Event.objects.filter(kind="click", offer=offers[1]).count() == 5


@needs_redis
@pytest.mark.django_db
def test_turning_the_buffer_off_does_not_strand_queued_events(client, buffered, settings):
    message, _ = sent_message()
    client.get(url("track-open", message.token, "open"), HTTP_USER_AGENT=HUMAN_UA)
    settings.TRACKING_BUFFER = False
    client.get(url("track-open", message.token, "open"), HTTP_USER_AGENT=HUMAN_UA)  # recorded directly
    assert Event.objects.count() == 1 and _queued(buffered) == 1
    assert tracking_flush.delay().get() == 1
    assert Event.objects.count() == 2


@pytest.mark.django_db
def test_unreachable_or_unset_redis_records_directly(client, settings):
    message, offers = sent_message()
    settings.TRACKING_BUFFER = True
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    client.get(url("track-open", message.token, "open"), HTTP_USER_AGENT=HUMAN_UA)
    response = client.get(offer_url(offers[0]), HTTP_USER_AGENT=HUMAN_UA)
    assert response.status_code == 302
    settings.REDIS_URL = ""
    client.get(url("track-open", message.token, "open"), HTTP_USER_AGENT=HUMAN_UA)
    assert sorted(Event.objects.values_list("kind", flat=True)) == ["click", "open", "open"]
    assert _touches(message)[1] is not None


@pytest.mark.parametrize(
    "address",
    ["10.1.2.3", "255.255.255.255", "17.1.2.3", "2001:db8::1", "::ffff:1.2.3.4", "01.2.3.4", "", "x"],
)
def test_network_hash_of_the_fast_path_is_the_ipaddress_one(address, settings):
    # The hot paths parse IPv4 with inet_pton; the stored hash must not change.
    try:
        ip = ipaddress.ip_address(address)
        network = str(ipaddress.ip_network(f"{ip}/{24 if ip.version == 4 else 48}", strict=False))
        expected = hmac.new(settings.SECRET_KEY.encode(), network.encode(), hashlib.sha256).hexdigest()
    except ValueError:
        expected = ""
    assert ip_hash(address) == expected


@needs_redis
@pytest.mark.django_db
def test_records_reach_redis_even_with_health_checks_on(client, buffered, settings):
    """The pusher never waits for an answer, so a health check (PING) must not be sent on it."""
    settings.REDIS_URL = (
        settings.REDIS_URL
        + ("&" if "?" in settings.REDIS_URL else "?")
        + "health_check_interval=1&socket_timeout=2"
    )
    message, _ = sent_message()
    path = url("track-open", message.token, "open")
    client.get(path, HTTP_USER_AGENT=HUMAN_UA)
    time.sleep(1.2)  # the next command is past the health check interval
    client.get(path, HTTP_USER_AGENT=HUMAN_UA)
    assert tracking_flush.delay().get() == 2


@needs_redis
@pytest.mark.django_db
def test_a_redis_error_answer_writes_the_unanswered_records_directly(client, buffered, caplog, monkeypatch):
    """Answers are read a batch late; until then the records are kept, and an error writes them directly."""
    message, _ = sent_message()
    path = url("track-open", message.token, "open")
    # A pusher of this test's own whose timer never runs during it: the timer thread's database
    # connection could not see this test's uncommitted rows.
    pusher = tracking_buffer._Pusher(os.environ["REDIS_URL"])
    pusher.DELAY = 3600.0
    monkeypatch.setitem(tracking_buffer._pushers, os.environ["REDIS_URL"], pusher)
    buffered.set(tracking_buffer.QUEUE, "not a list")  # every RPUSH now answers WRONGTYPE
    try:
        client.get(path, HTTP_USER_AGENT=HUMAN_UA)
        client.get(path, HTTP_USER_AGENT=HUMAN_UA)
        assert not Event.objects.exists()  # queued, answered later
        pusher.confirm()  # reads the error answer
    finally:
        buffered.delete(tracking_buffer.QUEUE)
    assert Event.objects.filter(kind="open").count() == 2
    assert "2 records are written to the database directly" in caplog.text
    # For a second pushes refuse, so the views record directly instead of connecting every time.
    client.get(path, HTTP_USER_AGENT=HUMAN_UA)
    assert Event.objects.filter(kind="open").count() == 3 and buffered.llen(tracking_buffer.QUEUE) == 0
    pusher._retry_at = 0.0  # the second is over
    client.get(path, HTTP_USER_AGENT=HUMAN_UA)  # a new connection, queued again
    pusher.confirm()
    assert tracking_flush.delay().get() == 1 and Event.objects.filter(kind="open").count() == 4


def _until(condition, seconds: float = 2.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


@needs_redis
@pytest.mark.django_db
def test_a_full_batch_is_sent_by_the_request_that_fills_it(buffered, rf):
    message, _ = sent_message()
    pusher = tracking_buffer._Pusher(os.environ["REDIS_URL"])
    pusher.DELAY = 60.0  # no timer send during this test
    request = rf.get("/", HTTP_USER_AGENT=HUMAN_UA)
    record = tracking_buffer._record(
        kind="open", token=message.token, request=request, reason="", now=message.sent_at
    )
    for _ in range(pusher.BATCH - 1):
        pusher.push(record)
    time.sleep(0.1)
    assert buffered.llen(tracking_buffer.QUEUE) == 0  # held until the batch is full
    pusher.push(record)
    assert _until(lambda: buffered.llen(tracking_buffer.QUEUE) == pusher.BATCH)
    pusher.confirm()
    assert tracking_flush.delay().get() == pusher.BATCH


@needs_redis
@pytest.mark.django_db
def test_a_partial_batch_is_sent_within_the_delay(client, buffered):
    message, _ = sent_message()
    tracking_buffer._pusher(os.environ["REDIS_URL"]).confirm()
    client.get(url("track-open", message.token, "open"), HTTP_USER_AGENT=HUMAN_UA)
    assert _until(lambda: buffered.llen(tracking_buffer.QUEUE) == 1)  # by the timer, no confirm()
    assert tracking_flush.delay().get() == 1


@needs_redis
@pytest.mark.django_db
def test_a_process_that_exits_sends_its_pending_records_first(buffered):
    message, _ = sent_message()
    script = f"""
import django
django.setup()
from django.test import RequestFactory
from campaigns import tracking_buffer
tracking_buffer._Pusher.DELAY = 3600.0  # no timer send: only the exit handler can send them
request = RequestFactory().get("/", HTTP_USER_AGENT="Mozilla/5.0")
for _ in range(3):
    tracking_buffer._push(tracking_buffer._record(kind="open", token={message.token!r}, request=request,
                                                  reason="", now=tracking_buffer._EPOCH))
"""
    env = dict(os.environ, TRACKING_BUFFER="1", DJANGO_SETTINGS_MODULE="xsell_crm.settings")
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=60)
    assert buffered.llen(tracking_buffer.QUEUE) == 3


@needs_redis
@pytest.mark.django_db
def test_a_failing_link_cache_does_not_count_a_click_twice(client, buffered, monkeypatch):
    import redis

    message, offers = sent_message()

    def broken(*args, **kwargs):
        raise redis.ConnectionError("cache down")

    monkeypatch.setattr(buffered, "get", broken)
    monkeypatch.setattr(buffered, "set", broken)
    response = client.get(offer_url(offers[0]), HTTP_USER_AGENT=HUMAN_UA)
    assert response.status_code == 302 and response["Location"] == offers[0].url
    assert not Event.objects.exists()  # not recorded directly as well
    assert tracking_flush.delay().get() == 1


@needs_redis
@pytest.mark.django_db
def test_a_forked_child_sends_its_own_records_never_its_parents(buffered, rf, monkeypatch):
    message, _ = sent_message()
    parent = tracking_buffer._Pusher(os.environ["REDIS_URL"])
    parent.DELAY = 3600.0  # the parent's records stay pending across the fork
    monkeypatch.setitem(tracking_buffer._pushers, os.environ["REDIS_URL"], parent)
    request = rf.get("/", HTTP_USER_AGENT=HUMAN_UA)
    record = tracking_buffer._record(
        kind="open", token=message.token, request=request, reason="", now=message.sent_at
    )
    for _ in range(3):
        tracking_buffer._push(record)
    pid = os.fork()
    if pid == 0:  # the child: two records of its own, then its exit handlers (the parent's pusher's too)
        try:
            for _ in range(2):
                tracking_buffer._push(record)
            atexit._run_exitfuncs()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert buffered.llen(tracking_buffer.QUEUE) == 2
    parent.confirm()
    assert buffered.llen(tracking_buffer.QUEUE) == 5
