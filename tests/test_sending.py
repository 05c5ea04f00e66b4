"""Sending invariants against a real SMTP server: exactly once, suppression, caps, retries, escaping."""

from __future__ import annotations

import re

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse
from django.utils import timezone

from campaigns.lifecycle import campaign_batches, campaign_start, recurring_run
from campaigns.models import Campaign, Message, Offer
from campaigns.planning import holdout_bucket
from campaigns.sending import messages_send, messages_sweep_stuck
from campaigns.sending.backend import outbox
from campaigns.tasks import dispatch, send_batch
from customers.models import Customer, Order

from .campaign_fixtures import campaign, shop
from .smtp import SMTPServer

pytestmark = pytest.mark.django_db


@pytest.fixture
def smtp(settings):
    with SMTPServer() as server:
        settings.EMAIL_BACKEND = "campaigns.sending.backend.EmailBackend"  # what EMAIL_URL selects
        settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", server.port
        settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
        settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""
        settings.SEND_RETRY_BASE_SECONDS = 0
        yield server.recorder


@pytest.fixture
def world():
    return shop(recipients=6)


def _recurring(world, cron: str) -> Campaign:
    """A recurring campaign between runs ("scheduled") on this schedule."""
    return campaign(
        template=world["template"],
        segment=world["segment"],
        kind=Campaign.Kind.RECURRING,
        status=Campaign.Status.SCHEDULED,
        schedule_cron=cron,
    )


def _send_all(c: Campaign) -> None:
    for ids in campaign_batches(campaign=c):
        messages_send(message_ids=ids)


def test_one_off_sends_one_email_per_customer_with_offers_and_headers(world, smtp):
    c = campaign(template=world["template"], segment=world["segment"])
    call_command("run_campaign", c.name, verbosity=0)
    counts = smtp.count_by_recipient()
    assert counts == {f"r{i}@example.com": 1 for i in range(6)}
    mail = smtp.to("r0@example.com")[0]
    assert mail["Subject"] == "Rec0, add-ons for you"
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "<https://" in mail["List-Unsubscribe"] or "<http://" in mail["List-Unsubscribe"]
    assert "mailto:" in mail["List-Unsubscribe"]
    assert mail["Message-ID"] and mail["X-Xsell-Campaign"] == str(c.pk)
    html = (
        next(p for p in mail.walk() if p.get_content_type() == "text/html").get_payload(decode=True).decode()
    )
    assert "Leather case" in html and "r0@example.com" not in html.split("<body")[1].split("You receive")[0]
    assert "https://shop.example/help" not in html  # rewritten to the click tracker
    offered = Offer.objects.filter(message__customer__external_id="R0").values_list("product__sku", flat=True)
    assert "CASE" in offered and "PHONE" not in offered  # never offer what the customer owns
    c.refresh_from_db()
    assert c.status == Campaign.Status.DONE


def test_running_twice_and_duplicate_task_delivery_send_once(world, smtp):
    c = campaign(template=world["template"], segment=world["segment"])
    campaign_start(campaign=c, enqueue=False)
    batches = campaign_batches(campaign=c)
    for ids in batches:
        send_batch(campaign_id=c.pk, message_ids=ids)
        send_batch(campaign_id=c.pk, message_ids=ids)  # the broker delivered the task twice
    dispatch(campaign_id=c.pk)
    with pytest.raises(CommandError, match="is done; nothing to send"):
        call_command("run_campaign", str(c.pk), verbosity=0)  # and a marketer runs it again
    assert set(smtp.count_by_recipient().values()) == {1}
    # One row per recipient; the 30 history customers without consent are recorded as suppressed.
    assert Message.objects.filter(campaign=c).exclude(skip_reason="suppressed").count() == 6
    assert Message.objects.filter(campaign=c, skip_reason="suppressed").count() == 30


def test_the_database_keeps_one_message_per_customer_per_run_and_per_triggering_order(world):
    """The invariant, in the database itself: planning twice (a task redelivered, two ticks) cannot add a
    second message, whatever the code that plans."""
    from django.db import IntegrityError, transaction

    c = campaign(template=world["template"], segment=world["segment"])
    campaign_start(campaign=c, enqueue=False)
    first = Message.objects.filter(campaign=c).first()
    with pytest.raises(IntegrityError), transaction.atomic():
        Message.objects.create(campaign=c, customer=first.customer, run=first.run)
    order = Order.objects.filter(customer=first.customer).first()
    Message.objects.create(campaign=c, customer=first.customer, trigger_order=order)  # its own occasion
    with pytest.raises(IntegrityError), transaction.atomic():
        Message.objects.create(campaign=c, customer=first.customer, trigger_order=order)
    assert Message.objects.filter(campaign=c, customer=first.customer).count() == 2


@pytest.mark.django_db(transaction=True)
def test_a_batch_delivered_to_four_workers_at_once_sends_each_email_once(smtp):
    """The claim locks its rows (SKIP LOCKED): a task the broker delivers to several workers at the same
    time sends each message once; the copies find them claimed."""
    import threading

    from django.db import connection, connections

    if connection.vendor != "postgresql":
        pytest.skip("SQLite's in-memory test database locks a second connection out of a write transaction")
    world = shop(recipients=40)
    c = campaign(template=world["template"], segment=world["segment"])
    campaign_start(campaign=c, enqueue=False)
    [ids] = campaign_batches(campaign=c)
    barrier, results = threading.Barrier(4), []

    def deliver():
        try:
            barrier.wait()
            results.append(messages_send(message_ids=ids))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(results) == 4 and sum(r["claimed"] for r in results) == sum(r["sent"] for r in results) == 40
    assert smtp.count_by_recipient() == {p.email: 1 for p in world["recipients"]}
    assert Message.objects.filter(pk__in=ids, status="sent").count() == 40


def test_a_4xx_retry_waits_twice_as_long_each_time_with_jitter_and_fails_after_the_last(settings):
    import datetime as dt

    from campaigns.sending.deliver import retry_fields

    settings.SEND_RETRY_BASE_SECONDS, settings.SEND_MAX_ATTEMPTS = 60, 4
    now = timezone.now()
    for attempts, base in ((1, 60), (2, 120), (3, 240)):
        waits = {(retry_fields(attempts, now)["send_after"] - now).total_seconds() for _ in range(200)}
        assert base * 0.5 <= min(waits) and max(waits) <= base * 1.5, attempts  # jitter: ±50%
        assert len(waits) > 150 and max(waits) - min(waits) > base * 0.5  # spread, not one value
    assert retry_fields(4, now) == {"status": "failed"}
    assert retry_fields(1, now)["send_after"] > now + dt.timedelta(seconds=29)


def test_a_paused_campaign_claims_nothing_until_resumed(world, smtp):
    from campaigns.lifecycle import campaign_pause, campaign_resume

    c = campaign(template=world["template"], segment=world["segment"])
    campaign_start(campaign=c, enqueue=False)
    ids = list(c.messages.filter(status="planned").values_list("pk", flat=True))
    campaign_pause(campaign=c)
    assert messages_send(message_ids=ids)["claimed"] == 0  # a batch queued before the pause sends nothing
    assert smtp.messages == [] and c.messages.filter(status="planned").count() == len(ids)
    campaign_resume(campaign=c)
    assert messages_send(message_ids=ids)["sent"] == len(ids)


def test_run_campaign_says_when_a_scheduled_campaign_runs_and_now_sends_it(world, smtp):
    import datetime as dt

    later = campaign(
        template=world["template"],
        segment=world["segment"],
        name="Later",
        send_at=timezone.now() + dt.timedelta(days=2),
    )
    with pytest.raises(CommandError, match=r"is scheduled for .*; --now sends it now"):
        call_command("run_campaign", later.name, verbosity=0)
    assert smtp.messages == []
    call_command("run_campaign", later.name, "--now", verbosity=0)
    assert len(smtp.count_by_recipient()) == 6
    weekly = _recurring(world, "0 9 * * 1")
    weekly.runs.all().delete()
    with pytest.raises(CommandError, match=r"runs on its schedule \('0 9 \* \* 1', UTC\); --now runs"):
        call_command("run_campaign", weekly.name, verbosity=0)
    Message.objects.filter(campaign=later).update(claimed_at=timezone.now() - dt.timedelta(days=30))
    call_command("run_campaign", weekly.name, "--now", verbosity=0)  # its latest scheduled run, now
    assert weekly.runs.count() == 1 and set(smtp.count_by_recipient().values()) == {2}
    call_command("run_campaign", weekly.name, "--now", verbosity=0)  # that run is done: not again
    assert weekly.runs.count() == 1 and set(smtp.count_by_recipient().values()) == {2}


def test_two_beat_ticks_for_the_same_slot_plan_one_run(world, smtp):
    c = _recurring(world, "0 9 * * 1")  # the model's default schedule
    now = timezone.now()
    recurring_run(campaign=c, now=now)
    recurring_run(campaign=c, now=now.replace(minute=(now.minute + 1) % 60) if now.minute < 59 else now)
    assert c.runs.count() == 1
    _send_all(c)
    assert set(smtp.count_by_recipient().values()) == {1}


def test_a_recurring_run_is_keyed_by_its_schedule_slot_not_the_hour_it_runs_in(world, smtp):
    """An hourly run at :45 whose tick a busy worker runs 17 minutes late, in the next hour, and a second
    beat's tick on time are one run; a schedule every 15 minutes gets a run per slot, not one per hour."""
    import datetime as dt

    c = _recurring(world, "45 * * * *")
    slot = timezone.now().astimezone(dt.UTC).replace(minute=45, second=0, microsecond=0) - dt.timedelta(
        hours=2
    )
    recurring_run(campaign=c, now=slot + dt.timedelta(minutes=17))
    recurring_run(campaign=c, now=slot + dt.timedelta(seconds=3))
    assert list(c.runs.values_list("key", flat=True)) == [slot.strftime("%Y-%m-%dT%H:%M")]
    _send_all(c)
    assert set(smtp.count_by_recipient().values()) == {1}

    Campaign.objects.filter(pk=c.pk).update(status=Campaign.Status.SCHEDULED, schedule_cron="*/15 * * * *")
    c.refresh_from_db()
    recurring_run(campaign=c, now=slot + dt.timedelta(minutes=30, seconds=2))  # the :15 slot
    recurring_run(campaign=c, now=slot + dt.timedelta(minutes=45, seconds=2))  # the :30 slot
    assert sorted(c.runs.values_list("key", flat=True))[1:] == [
        (slot + dt.timedelta(minutes=m)).strftime("%Y-%m-%dT%H:%M") for m in (30, 45)
    ]


def test_a_recurring_tick_from_a_worker_whose_clock_is_behind_beats_still_plans_its_slot(world):
    """Beat sends the 09:00 task at 09:00 by its clock; a worker 0.2 s behind must not read it as the
    previous slot, which is planned already (the run would plan nothing)."""
    import datetime as dt

    c = _recurring(world, "0 9 * * *")
    day = timezone.now().astimezone(dt.UTC).replace(hour=9, minute=0, second=0, microsecond=0)
    recurring_run(campaign=c, now=day - dt.timedelta(days=1, seconds=-5))
    Campaign.objects.filter(pk=c.pk).update(status=Campaign.Status.SCHEDULED)
    recurring_run(campaign=c, now=day - dt.timedelta(seconds=0.2))
    assert sorted(c.runs.values_list("key", flat=True)) == [
        (day - dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M"),
        day.strftime("%Y-%m-%dT%H:%M"),
    ]


def test_a_run_planned_under_the_old_hour_key_is_not_planned_again(world):
    """Runs were keyed by the hour they ran in: a task redelivered across the upgrade finds that run."""
    import datetime as dt

    c = _recurring(world, "0 9 * * *")
    now = timezone.now().astimezone(dt.UTC).replace(hour=9, minute=0, second=3)
    c.runs.create(key=now.strftime("%Y-%m-%dT%H"))
    recurring_run(campaign=c, now=now)
    assert c.runs.count() == 1 and not c.messages.exists()


def test_schedule_slot_reads_the_cron_as_beat_does():
    import datetime as dt

    from campaigns.lifecycle import schedule_slot

    now = dt.datetime(2026, 11, 29, 10, 7, 30, tzinfo=dt.UTC)  # a Sunday
    assert schedule_slot("*/15 * * * *", now) == now.replace(minute=0, second=0)
    assert schedule_slot("30 9 * * mon-fri", now) == dt.datetime(2026, 11, 27, 9, 30, tzinfo=dt.UTC)
    assert schedule_slot("0 8 1 * *", now) == dt.datetime(2026, 11, 1, 8, 0, tzinfo=dt.UTC)
    assert schedule_slot("7 10 * * *", now) == now.replace(second=0)  # fires this very minute
    assert schedule_slot("0 0 29 2 *", now) == dt.datetime(2024, 2, 29, tzinfo=dt.UTC)
    assert schedule_slot("99 * * * *", now) is None
    # Mondays 09:00 in London: 08:00 UTC in summer time, 09:00 in winter.
    assert schedule_slot("0 9 * * 1", dt.datetime(2026, 7, 1, tzinfo=dt.UTC), "Europe/London") == dt.datetime(
        2026, 6, 29, 8, 0, tzinfo=dt.UTC
    )
    assert schedule_slot("0 9 * * 1", now, "Europe/London") == dt.datetime(2026, 11, 23, 9, 0, tzinfo=dt.UTC)
    # 01:30 happens twice on 25 October 2026 in London: its second time is the same slot as its first.
    first, second = (dt.datetime(2026, 10, 25, h, 31, tzinfo=dt.UTC) for h in (0, 1))
    assert schedule_slot("30 1 * * *", first, "Europe/London") == schedule_slot(
        "30 1 * * *", second, "Europe/London"
    )
    assert schedule_slot("0 9 * * *", now, "Mars/Olympus") is None
    # 01:30 does not exist on 29 March 2026 in London: beat runs it at 01:30 UTC (02:30 summer time).
    spring = dt.datetime(2026, 3, 29, 1, 30, 5, tzinfo=dt.UTC)
    assert schedule_slot("30 1 * * *", spring, "Europe/London") == spring.replace(second=0)
    assert schedule_slot("30 1 * * *", spring - dt.timedelta(minutes=1), "Europe/London") == dt.datetime(
        2026, 3, 28, 1, 30, tzinfo=dt.UTC
    )


def test_a_recurring_run_leaves_a_campaign_cancelled_meanwhile_cancelled(world):
    from campaigns.lifecycle import campaign_cancel

    c = _recurring(world, "0 9 * * 1")  # the model's default schedule
    read_by_the_task = Campaign.objects.get(pk=c.pk)
    campaign_cancel(campaign=c)  # the marketer, after the beat task read the campaign
    recurring_run(campaign=read_by_the_task)
    c.refresh_from_db()
    assert c.status == Campaign.Status.CANCELLED and not c.messages.exists()


@pytest.mark.django_db(transaction=True)
def test_a_dispatch_while_a_campaign_is_being_planned_does_not_finish_it(monkeypatch):
    """A tick dispatches every sending campaign; one that comes while a start is still planning must
    not find it sending with nothing planned (and mark it done, its messages never sent)."""
    import threading

    from django.db import connection, connections

    from campaigns import lifecycle

    if connection.vendor != "postgresql":
        pytest.skip("SQLite's in-memory test database locks a second connection out of a write transaction")
    world = shop(recipients=6)
    c = campaign(template=world["template"], segment=world["segment"])
    plan, seen = lifecycle.campaign_plan, {}

    def plan_with_a_tick_in_between(**kwargs):
        def tick():
            try:
                seen["batches"] = dispatch(campaign_id=c.pk)
                seen["status"] = Campaign.objects.get(pk=c.pk).status
            finally:
                connections.close_all()

        thread = threading.Thread(target=tick)
        thread.start()
        thread.join(30)
        assert not thread.is_alive()
        return plan(**kwargs)

    monkeypatch.setattr(lifecycle, "campaign_plan", plan_with_a_tick_in_between)
    campaign_start(campaign=c, enqueue=False)
    c.refresh_from_db()
    assert seen == {"batches": 0, "status": Campaign.Status.DRAFT}  # not sending yet, for the tick
    assert c.status == Campaign.Status.SENDING
    assert c.messages.filter(status=Message.Status.PLANNED).count() == 6


def test_unsubscribe_mid_campaign_stops_later_sends(world, smtp):
    c = campaign(template=world["template"], segment=world["segment"])
    campaign_start(campaign=c, enqueue=False)
    Customer.objects.filter(external_id="R3").update(
        suppressed_reason="unsubscribed", suppressed_at=timezone.now()
    )
    _send_all(c)
    assert "r3@example.com" not in smtp.count_by_recipient()
    m = Message.objects.get(campaign=c, customer__external_id="R3")
    assert (m.status, m.skip_reason) == ("skipped", "suppressed")


def test_frequency_cap_across_campaigns(world, smtp):
    from campaigns.models import FrequencyPolicy

    FrequencyPolicy.objects.filter(is_default=True).update(max_messages=1, window_days=7)
    campaigns = [
        campaign(template=world["template"], segment=world["segment"], name=f"C{i}") for i in range(3)
    ]
    for c in campaigns:
        campaign_start(campaign=c, enqueue=False)
    for c in campaigns:
        _send_all(c)
    assert set(smtp.count_by_recipient().values()) == {1}
    capped = Message.objects.filter(status="skipped", skip_reason="capped").count()
    assert capped == 2 * 6


def test_holdout_members_get_a_row_and_no_email(world, smtp):
    c = campaign(template=world["template"], segment=world["segment"], holdout_percent=50)
    call_command("run_campaign", c.name, verbosity=0)
    held = set(Message.objects.filter(campaign=c, status="holdout").values_list("customer__email", flat=True))
    expected = {
        p.email for p in world["recipients"] if holdout_bucket(campaign_id=c.pk, customer_id=p.pk) < 50
    }
    assert held == expected
    assert not held & set(smtp.count_by_recipient())
    assert len(held) + len(smtp.count_by_recipient()) == 6


def test_customer_name_is_escaped_in_html(world, smtp):
    Customer.objects.filter(external_id="R1").update(first_name="<script>alert(1)</script>")
    c = campaign(template=world["template"], segment=world["segment"])
    call_command("run_campaign", c.name, verbosity=0)
    mail = smtp.to("r1@example.com")[0]
    html = (
        next(p for p in mail.walk() if p.get_content_type() == "text/html").get_payload(decode=True).decode()
    )
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html


def test_a_template_failing_for_one_recipient_does_not_stop_the_others(world, smtp):
    t = world["template"]
    # Breaks only for first names of length 4 ("Rec0".."Rec5" are all 4; make one different).
    Customer.objects.filter(external_id="R2").update(first_name="Bo")
    t.html = "{{ 10 // (customer.first_name|length - 2) }}" + t.html
    t.save()
    c = campaign(template=t, segment=world["segment"])
    call_command("run_campaign", c.name, verbosity=0)
    assert "r2@example.com" not in smtp.count_by_recipient()
    assert len(smtp.count_by_recipient()) == 5
    m = Message.objects.get(campaign=c, customer__external_id="R2")
    assert m.skip_reason == "render_error" and "ZeroDivisionError" in m.error


def test_a_page_the_css_inliner_refuses_fails_only_its_message(world, smtp, monkeypatch):
    """CSS is inlined for a whole chunk in one call; a page it cannot take fails that message alone."""
    from campaigns.sending import compose

    real = compose.pages_inline

    def refusing(pages):
        if any("Rec3" in page for page in pages):  # stands in for a page css_inline raises on
            raise ValueError("invalid stylesheet")
        return real(pages)

    monkeypatch.setattr(compose, "pages_inline", refusing)
    c = campaign(template=world["template"], segment=world["segment"])
    call_command("run_campaign", c.name, verbosity=0)
    assert sorted(smtp.count_by_recipient()) == [f"r{i}@example.com" for i in (0, 1, 2, 4, 5)]
    m = Message.objects.get(campaign=c, customer__external_id="R3")
    assert m.skip_reason == "render_error" and "CSS inlining: invalid stylesheet" in m.error
    assert not m.links.exists()  # its body links were not stored


def test_smtp_451_then_250_delivers_once_and_550_fails_and_suppresses(world, smtp):
    smtp.script["r0@example.com"].append("451 4.3.0 try again later")
    smtp.script["r1@example.com"].append("550 5.1.1 no such user")
    c = campaign(template=world["template"], segment=world["segment"])
    campaign_start(campaign=c, enqueue=False)
    _send_all(c)
    first = Message.objects.get(campaign=c, customer__external_id="R0")
    assert first.status == "planned" and first.attempts == 1 and "451" in first.error
    _send_all(c)  # the retry, due at once with SEND_RETRY_BASE_SECONDS = 0
    counts = smtp.count_by_recipient()
    assert counts.get("r0@example.com") == 1
    assert "r1@example.com" not in counts
    assert len(counts) == 5  # the rest of the batch went out
    bounced = Message.objects.get(campaign=c, customer__external_id="R1")
    assert bounced.status == "failed"
    assert Customer.objects.get(external_id="R1").suppressed_reason == "bounced"


def test_no_offer_above_minimum_score_is_skipped_not_sent_empty(world, smtp):
    c = campaign(template=world["template"], segment=world["segment"], min_offer_score=1.01)
    call_command("run_campaign", c.name, verbosity=0)
    assert smtp.messages == []
    reasons = Message.objects.filter(campaign=c, customer__in=world["recipients"]).values_list(
        "skip_reason", flat=True
    )
    assert set(reasons) == {"no_offer"}


def test_stuck_sending_becomes_uncertain_and_is_never_resent(world, smtp, settings):
    c = campaign(template=world["template"], segment=world["segment"])
    campaign_start(campaign=c, enqueue=False)
    m = Message.objects.filter(campaign=c, status="planned").first()
    Message.objects.filter(pk=m.pk).update(
        status="sending", claimed_at=timezone.now() - timezone.timedelta(hours=1)
    )
    assert messages_sweep_stuck() == 1
    _send_all(c)
    assert m.customer.email not in smtp.count_by_recipient()
    assert Message.objects.get(pk=m.pk).status == "uncertain"


def test_a_slow_server_gets_no_email_after_the_batch_deadline_the_rest_is_sent_later(
    world, smtp, monkeypatch
):
    """Past most of SEND_STUCK_MINUTES the sweep may call the batch's messages uncertain: the courier
    hands the server nothing more, and the rest of the batch is planned again instead of being sent
    and recorded as uncertain (or left for the sweep)."""
    import time

    import campaigns.sending as sending

    # Time to compose the batch's one chunk (its model loaded cold) and send some of it, not all.
    monkeypatch.setattr(sending, "send_deadline", lambda: time.monotonic() + 1.5)
    smtp.on_data = lambda message: time.sleep(0.4)  # a slow server
    c = campaign(template=world["template"], segment=world["segment"])
    campaign_start(campaign=c, enqueue=False)
    counts = {}
    for ids in campaign_batches(campaign=c):
        counts = messages_send(message_ids=ids)
    assert 0 < counts["sent"] < 6 and counts["sent"] + counts["retry"] == 6
    late = Message.objects.filter(campaign=c, status="planned")
    assert late.count() == counts["retry"] and all("ran out of time" in m.error for m in late)
    assert not Message.objects.filter(campaign=c, status__in=("sending", "uncertain")).exists()

    smtp.on_data = None
    monkeypatch.undo()
    late.update(send_after=None)
    _send_all(c)
    assert smtp.count_by_recipient() == {f"r{i}@example.com": 1 for i in range(6)}


def test_a_courier_interrupted_while_waiting_still_records_what_the_server_answered(world):
    """The batch's last wait (for the courier) interrupted: accepted messages are recorded sent, and a
    hard bounce still suppresses its customer, instead of all of them left for the sweep."""
    from campaigns.sending.deliver import Courier

    c = campaign(template=world["template"], segment=world["segment"])
    campaign_start(campaign=c, enqueue=False)
    accepted, bounced = Message.objects.filter(campaign=c, status="planned")[:2]
    Message.objects.filter(pk__in=[accepted.pk, bounced.pk]).update(status="sending", attempts=1)
    courier = Courier({"sent": 0, "retry": 0, "failed": 0, "uncertain": 0})
    now = timezone.now()
    courier.outcomes.put((accepted, "sent", "", False, now))
    courier.outcomes.put((bounced, "failed", "550 5.1.1 no such user", True, now))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    courier.thread.join = interrupted
    with pytest.raises(KeyboardInterrupt):
        courier.__exit__(None, None, None)
    assert Message.objects.get(pk=accepted.pk).status == "sent"
    assert Message.objects.get(pk=bounced.pk).status == "failed"
    assert Customer.objects.get(pk=bounced.customer_id).suppressed_reason == "bounced"


def test_a_misconfigured_post_purchase_campaign_fails_alone_not_the_import_or_the_others(
    world, tmp_path, django_capture_on_commit_callbacks
):
    """A campaign whose planning fails (here a delay too large for a date, set without the form's check)
    must not report a written import as failed, nor keep the other campaigns from planning."""
    from customers.importing import orders_import

    broken = campaign(
        template=world["template"], segment=world["segment"], name="Broken", kind=Campaign.Kind.POST_PURCHASE
    )
    good = campaign(
        template=world["template"], segment=world["segment"], name="Good", kind=Campaign.Kind.POST_PURCHASE
    )
    campaign_start(campaign=broken, enqueue=False)
    campaign_start(campaign=good, enqueue=False)
    Campaign.objects.filter(pk=broken.pk).update(delay_hours=2_000_000_000)  # fits the column, not a date
    placed = timezone.now().replace(microsecond=0).isoformat()
    path = tmp_path / "orders.csv"
    path.write_text(
        "order_id,customer_id,ordered_at,sku,product_name,category,quantity,unit_price\n"
        f"W-1,R0,{placed},PHONE,Phone,phones,1,500\n"
    )
    with django_capture_on_commit_callbacks(execute=True):
        summary = orders_import(path=path)  # post-commit receivers run in-process here, as in the demo
    assert summary.counts["orders_created"] == 1
    order = Order.objects.get(external_id="W-1")
    assert Message.objects.filter(campaign=good, trigger_order=order).count() == 1
    assert not Message.objects.filter(campaign=broken, trigger_order=order).exists()


def test_an_order_dated_in_the_future_triggers_nothing(world):
    """Entered by hand with a typo'd year: its email would be planned years ahead, or (year 9999) past
    the last date there is, failing the campaign's planning on every tick."""
    import datetime as dt

    from campaigns.planning import post_purchase_plan

    c = campaign(template=world["template"], segment=world["segment"], kind=Campaign.Kind.POST_PURCHASE)
    campaign_start(campaign=c, enqueue=False)
    customer = world["recipients"][0]
    far = Order.objects.create(
        external_id="FAR", customer=customer, placed_at=dt.datetime(9999, 12, 31, tzinfo=dt.UTC), total=5
    )
    post_purchase_plan(campaign=c)
    assert not Message.objects.filter(trigger_order=far).exists()


def test_a_message_the_server_never_saw_is_deferred_not_failed_at_its_last_attempt(world, settings):
    """Kept from the server (the batch's deadline, the server unreachable): deferred, which is not an
    attempt; the real attempts alone count towards SEND_MAX_ATTEMPTS."""
    import datetime as dt

    from campaigns.sending import deliver

    c = campaign(template=world["template"], segment=world["segment"])
    campaign_start(campaign=c, enqueue=False)
    m = Message.objects.filter(campaign=c, status="planned").first()
    Message.objects.filter(pk=m.pk).update(status="sending", attempts=settings.SEND_MAX_ATTEMPTS)
    m.refresh_from_db()
    deliver._record(m, "deferred", f"{deliver.OUT_OF_TIME} (SEND_STUCK_MINUTES is 15)")
    m.refresh_from_db()
    assert (m.status, m.deferrals) == ("planned", 1) and m.deferred_since is not None
    # Claimed again: a 4xx at the 5th claim is the 4th real attempt, retried (the deferral was none).
    Message.objects.filter(pk=m.pk).update(status="sending")
    m.refresh_from_db()
    deliver._record(m, "retry", "451 4.3.0 try again later")
    m.refresh_from_db()
    assert m.status == "planned" and m.deferred_since is None  # the server was reached: the run ended
    # At the 6th claim, the 5th real attempt: a 4xx fails it.
    Message.objects.filter(pk=m.pk).update(status="sending", attempts=settings.SEND_MAX_ATTEMPTS + 1)
    m.refresh_from_db()
    deliver._record(m, "retry", "451 4.3.0 try again later")
    assert Message.objects.get(pk=m.pk).status == "failed"
    # Deferred for longer than SEND_DEFER_HOURS: failed, saying why.
    Message.objects.filter(pk=m.pk).update(
        status="sending",
        attempts=2,
        deferrals=1,
        deferred_since=timezone.now() - dt.timedelta(hours=settings.SEND_DEFER_HOURS, minutes=1),
    )
    m.refresh_from_db()
    deliver._record(m, "deferred", "cannot connect: ConnectionRefusedError")
    m.refresh_from_db()
    assert m.status == "failed" and m.deferrals == 2
    assert (
        m.error
        == f"not sent for {settings.SEND_DEFER_HOURS} hours; last: cannot connect: ConnectionRefusedError"
    )


def test_time_paused_does_not_count_towards_giving_up_on_deferred_messages(world, settings):
    import datetime as dt

    from campaigns.lifecycle import campaign_pause, campaign_resume
    from campaigns.sending import deliver

    c = campaign(template=world["template"], segment=world["segment"])
    campaign_start(campaign=c, enqueue=False)
    m = Message.objects.filter(campaign=c, status="planned").first()
    long_ago = timezone.now() - dt.timedelta(hours=settings.SEND_DEFER_HOURS + 24)
    Message.objects.filter(pk=m.pk).update(deferrals=1, attempts=1, deferred_since=long_ago)
    campaign_pause(campaign=c)  # deferred once, then paused for two days
    campaign_resume(campaign=c)
    Message.objects.filter(pk=m.pk).update(status="sending", attempts=2)
    m.refresh_from_db()
    deliver._record(m, "deferred", "cannot connect: ConnectionRefusedError")
    assert Message.objects.get(pk=m.pk).status == "planned"


def test_a_batch_past_its_deadline_composes_nothing_more_and_defers_the_rest(world, smtp, monkeypatch):
    import time

    import campaigns.sending as sending

    monkeypatch.setattr(sending, "send_deadline", lambda: time.monotonic() - 1)  # already past
    c = campaign(template=world["template"], segment=world["segment"])
    campaign_start(campaign=c, enqueue=False)
    counts = messages_send(message_ids=campaign_batches(campaign=c)[0])
    assert counts["claimed"] == counts["retry"] == 6 and counts["sent"] == 0
    assert not smtp.count_by_recipient()
    messages = Message.objects.filter(campaign=c, status="planned")
    assert messages.count() == 6 and set(messages.values_list("deferrals", "attempts")) == {(1, 1)}
    assert all("ran out of time" in m.error for m in messages)
    assert not Offer.objects.filter(message__campaign=c).exists()  # nothing was composed


def test_a_deferred_message_waits_about_as_long_as_it_has_waited_up_to_a_bound(world, settings):
    import datetime as dt

    from campaigns.sending.deliver import deferral_fields

    settings.SEND_RETRY_BASE_SECONDS, settings.SEND_DEFER_MAX_SECONDS = 60, 1800
    now = timezone.now()
    m = Message(attempts=1)
    first = deferral_fields(m, now, "")
    assert first["deferred_since"] == now and 30 <= (first["send_after"] - now).total_seconds() <= 90
    m.deferred_since = now - dt.timedelta(minutes=10)
    later = deferral_fields(m, now, "")
    assert 300 <= (later["send_after"] - now).total_seconds() <= 900
    m.deferred_since = now - dt.timedelta(hours=5)
    assert (deferral_fields(m, now, "")["send_after"] - now).total_seconds() <= 2700


def test_a_mail_server_down_for_longer_than_the_attempts_delays_the_campaign_without_failing_it(
    world, settings, admin_client
):
    """Every round finds the server unreachable, more rounds than SEND_MAX_ATTEMPTS; once it is back,
    each customer gets one email."""
    from .smtp import SMTPServer

    settings.EMAIL_BACKEND = "campaigns.sending.backend.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_USE_TLS, settings.EMAIL_USE_SSL = "127.0.0.1", False, False
    settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""
    settings.SEND_RETRY_BASE_SECONDS = settings.SEND_DEFER_MAX_SECONDS = 0
    with SMTPServer() as server:
        port = server.port
    settings.EMAIL_PORT = port  # nothing listens there now: every connection is refused
    c = campaign(template=world["template"], segment=world["segment"])
    campaign_start(campaign=c, enqueue=False)
    for _ in range(settings.SEND_MAX_ATTEMPTS + 2):
        _send_all(c)
    outcomes = _outcomes(c)
    assert {status for status, _ in outcomes.values()} == {"planned"}
    assert all("cannot connect" in error for _, error in outcomes.values())
    page = admin_client.get(reverse("admin:campaigns_campaign_change", args=[c.pk])).content.decode()
    assert ". 6 waiting because the mail server could not take them, since" in page
    assert "Last error: cannot connect: ConnectionRefusedError" in page and "the first fail at" in page
    Campaign.objects.filter(pk=c.pk).update(status="paused")
    page = admin_client.get(reverse("admin:campaigns_campaign_change", args=[c.pk])).content.decode()
    assert "tried again when the campaign is resumed" in page and "next try" not in page
    Campaign.objects.filter(pk=c.pk).update(status="sending")
    waiting = admin_client.get(reverse("admin:campaigns_message_changelist"), {"deferred": "waiting"})
    assert waiting.context["cl"].queryset.count() == 6  # the list's filter: waiting for the mail server
    with SMTPServer() as server:
        settings.EMAIL_PORT = server.port
        _send_all(c)
        counts = server.recorder.count_by_recipient()
    assert sorted(counts.values()) == [1] * 6 == [1] * len(outcomes)
    assert not Message.objects.filter(campaign=c, deferred_since__isnull=False).exists()  # the run ended
    assert {status for status, _ in _outcomes(c).values()} == {"sent"}
    assert set(Message.objects.filter(campaign=c, status="sent").values_list("deferrals", flat=True)) == {
        settings.SEND_MAX_ATTEMPTS + 2
    }


def test_post_purchase_plans_one_message_per_trigger_order_after_the_delay(world, smtp):
    c = campaign(
        template=world["template"],
        segment=world["segment"],
        kind=Campaign.Kind.POST_PURCHASE,
        delay_hours=24,
        trigger_skus=["PHONE"],
    )
    campaign_start(campaign=c, enqueue=False)
    call_command("run_campaign", c.name, verbosity=0)
    call_command("run_campaign", c.name, verbosity=0)
    assert len(smtp.count_by_recipient()) == 6 and set(smtp.count_by_recipient().values()) == {1}
    assert all(m.trigger_order_id for m in Message.objects.filter(campaign=c))


def test_dry_run_sends_nothing(world, smtp, capsys):
    c = campaign(template=world["template"], segment=world["segment"])
    call_command("run_campaign", c.name, "--dry-run")
    out = capsys.readouterr().out
    assert "audience (segment)" in out and "would be sent: 6" in out
    assert smtp.messages == [] and not Message.objects.exists()


def test_a_large_dry_run_estimates_the_capped_from_a_sample(world, monkeypatch, capsys):
    """Above PREVIEW_CAP_SAMPLE recipients the caps of a fixed sample are read (the whole audience's
    would outlast the request at a million): the estimate says so, and is exact in share."""
    from campaigns import planning
    from campaigns.caps import policy_default

    c = campaign(template=world["template"], segment=world["segment"])
    capped = world["recipients"][:3]
    policy = policy_default()
    for customer in capped:  # mailed an hour ago: inside the 24 h gap
        Message.objects.create(
            campaign=campaign(
                template=world["template"], segment=world["segment"], name=f"Earlier {customer.pk}"
            ),
            customer=customer,
            status="sent",
            claimed_at=timezone.now() - timezone.timedelta(hours=1),
            sent_at=timezone.now() - timezone.timedelta(hours=1),
        )
    type(policy).objects.filter(pk=policy.pk).update(min_gap_hours=24)
    exact = planning.campaign_preview(campaign=c)
    assert (exact.capped, exact.would_send, exact.capped_sampled) == (3, 3, 0)
    monkeypatch.setattr(planning, "PREVIEW_CAP_SAMPLE", 4)
    estimate = planning.campaign_preview(campaign=c)
    assert estimate.capped_sampled == 4 and estimate.capped + estimate.would_send == 6
    assert estimate.capped in (2, 3, 4)  # 1 to 3 of the 4 read, scaled to 6 and rounded (1.5 → 2)
    call_command("run_campaign", c.name, "--dry-run")
    assert "(estimated from 4 recipients)" in capsys.readouterr().out


def _html(mail) -> str:
    return (
        next(p for p in mail.walk() if p.get_content_type() == "text/html").get_payload(decode=True).decode()
    )


def _assert_links_stored(c: Campaign, smtp, settings) -> None:
    """Every click link in every sent email leads to a row of its message: the template's own links to
    their TrackedLinks, the offers' to the offers (with their URLs), the honeypot to the message."""
    import re

    from campaigns.models import TrackedLink
    from campaigns.sending import product_url, with_utm
    from campaigns.tokens import purpose_token_check

    def tokens(html: str, path: str, purpose: str) -> set[str | None]:
        return {purpose_token_check(value, purpose) for value in re.findall(rf'/t/{path}/([^"\'<\s]+)', html)}

    assert set(smtp.count_by_recipient().values()) == {1} and len(smtp.count_by_recipient()) == 6
    for m in Message.objects.filter(campaign=c, status="sent").select_related("customer"):
        html = _html(smtp.to(m.customer.email)[0])
        links = TrackedLink.objects.filter(message=m)
        assert tokens(html, "c", "click") == set(links.values_list("token", flat=True))
        assert list(links.values_list("url", "offer", "is_honeypot")) == [
            ("https://shop.example/help", None, False)
        ]
        offers = Offer.objects.filter(message=m)
        assert tokens(html, "p", "offer-click") == set(offers.values_list("token", flat=True))
        assert all(o.url == with_utm(product_url(o.product), c) for o in offers)
        assert tokens(html, "h", "honeypot") == {m.token}
        assert m.sent_at and m.message_id == f"<{m.token}@{settings.DEFAULT_FROM_EMAIL.rpartition('@')[2]}>"


def test_every_tracked_link_in_a_sent_email_is_stored_for_its_message(world, smtp, monkeypatch, settings):
    from campaigns import sending

    monkeypatch.setattr(sending, "FIRST_CHUNK", 2)
    monkeypatch.setattr(sending, "COMPOSE_CHUNK", 3)  # 6 recipients: three chunks, one connection
    c = campaign(template=world["template"], segment=world["segment"])
    call_command("run_campaign", c.name, verbosity=0)
    _assert_links_stored(c, smtp, settings)


@pytest.mark.django_db(transaction=True)
def test_outside_a_transaction_a_store_thread_writes_each_chunk_before_it_goes_out(
    world, smtp, monkeypatch, settings
):
    import threading

    from django.db import connection

    from campaigns import sending
    from campaigns.sending.store import Store

    monkeypatch.setattr(sending, "FIRST_CHUNK", 2)
    monkeypatch.setattr(sending, "COMPOSE_CHUNK", 3)
    stored_by, store = [], Store._store

    def spy(self, offers, links, ready):
        stored_by.append(threading.current_thread().name)
        assert all(o.pk is None for drafts in offers.values() for o in drafts)  # not stored yet
        store(self, offers, links, ready)

    monkeypatch.setattr(Store, "_store", spy)
    seen_on_arrival = {}
    if connection.vendor == "postgresql":
        import psycopg

        db = connection.settings_dict

        def committed_rows(message):  # from a connection of its own: only what was committed
            token = message["X-Xsell-Message"]
            with psycopg.connect(
                dbname=db["NAME"], user=db["USER"], host=db["HOST"], port=db["PORT"] or 5432
            ) as other:
                seen_on_arrival[token] = other.execute(
                    "SELECT (SELECT count(*) FROM campaigns_offer o WHERE o.message_id = m.id),"
                    " (SELECT count(*) FROM campaigns_trackedlink l WHERE l.message_id = m.id)"
                    " FROM campaigns_message m WHERE m.token = %s",
                    [token],
                ).fetchone()

        smtp.on_data = committed_rows
    c = campaign(template=world["template"], segment=world["segment"])
    campaign_start(campaign=c, enqueue=False)
    _send_all(c)
    # PostgreSQL: the store thread's own connection (it sees committed rows only); SQLite: the caller's.
    assert set(stored_by) == {"xsell-store" if connection.vendor == "postgresql" else "MainThread"}
    assert len(stored_by) == 3
    _assert_links_stored(c, smtp, settings)
    if connection.vendor == "postgresql":  # every email's offers and links were committed when it arrived
        final = {
            m.token: (m.offers.count(), m.links.count())
            for m in Message.objects.filter(campaign=c, status="sent")
        }
        assert seen_on_arrival == final and all(offers and links for offers, links in final.values())


@pytest.mark.django_db(transaction=True)
def test_a_chunk_that_cannot_be_stored_is_not_sent_and_its_error_reaches_the_caller(world, smtp, monkeypatch):
    from campaigns import sending
    from campaigns.sending import store

    monkeypatch.setattr(sending, "FIRST_CHUNK", 2)
    monkeypatch.setattr(sending, "COMPOSE_CHUNK", 2)  # three chunks of two
    calls, links_store = [], store.links_store

    def failing_second(rows):
        calls.append(len(rows))
        if len(calls) == 2:
            raise RuntimeError("database went away")
        links_store(rows)

    monkeypatch.setattr(store, "links_store", failing_second)
    c = campaign(template=world["template"], segment=world["segment"])
    campaign_start(campaign=c, enqueue=False)
    with pytest.raises(RuntimeError, match="database went away"):
        _send_all(c)
    statuses = sorted(
        Message.objects.filter(campaign=c, status__in=["planned", "sending", "sent"]).values_list(
            "status", flat=True
        )
    )
    # The first chunk went out and is recorded; the others never reached the courier: planned again
    # (not left "sending", which the sweep would make "uncertain", never sent).
    assert statuses == ["planned"] * 4 + ["sent"] * 2
    assert len(smtp.count_by_recipient()) == 2
    again = Message.objects.filter(campaign=c, status="planned")
    assert all("database went away" in m.error and m.send_after and m.attempts == 1 for m in again)
    monkeypatch.setattr(store, "links_store", links_store)
    Message.objects.filter(campaign=c, status="planned").update(send_after=None)
    _send_all(c)  # the next dispatch sends them, once
    assert smtp.count_by_recipient() == {f"r{i}@example.com": 1 for i in range(6)}


def test_a_refused_connection_leaves_every_message_to_retry(world, smtp, settings):
    from .smtp import free_port

    settings.EMAIL_PORT = free_port()  # nothing listens there
    c = campaign(template=world["template"], segment=world["segment"])
    campaign_start(campaign=c, enqueue=False)
    counts = messages_send(message_ids=campaign_batches(campaign=c)[0])
    assert counts["retry"] == 6 and counts["sent"] == 0
    statuses = set(
        Message.objects.filter(campaign=c, customer__in=world["recipients"]).values_list("status", "attempts")
    )
    assert statuses == {("planned", 1)}
    assert smtp.messages == []


@pytest.mark.parametrize(
    "stored_by",
    ["caller", pytest.param("store thread", marks=pytest.mark.django_db(transaction=True))],
)
def test_a_retried_message_keeps_the_offers_of_its_first_attempt(world, smtp, stored_by, client):
    """And their links lead to them: also an offer stored before offers kept their URLs (a retry across
    that upgrade), whose URL the retry stores."""
    import re

    from campaigns.sending import product_url, with_utm

    smtp.script["r0@example.com"].append("451 4.3.0 try again later")
    c = campaign(template=world["template"], segment=world["segment"])
    campaign_start(campaign=c, enqueue=False)
    _send_all(c)
    m = Message.objects.get(campaign=c, customer__external_id="R0")
    first = list(Offer.objects.filter(message=m).order_by("rank").values_list("pk", "token", "url"))
    assert m.status == "planned" and len(first) >= 2 and all(url for _, _, url in first)
    Offer.objects.filter(pk=first[0][0]).update(url="")  # as an offer of a release before 0014
    _send_all(c)
    assert list(Offer.objects.filter(message=m).order_by("rank").values_list("pk", "token", "url")) == first
    html = _html(smtp.to("r0@example.com")[0])
    assert all(token in html for _, token, _ in first)  # the accept links name the stored offers
    links = re.findall(r'href="[^"]*(/t/p/[^"]+)"', html)
    assert len(links) == len(first)
    for path, (pk, _, url) in zip(links, first, strict=True):
        response = client.get(path, HTTP_USER_AGENT="Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0")
        assert (response.status_code, response["Location"]) == (302, url)
        assert url == with_utm(product_url(Offer.objects.get(pk=pk).product), c)


def test_a_batch_is_composed_in_chunks_small_at_both_ends():
    from campaigns.sending import _chunks

    batch = list(range(1000))
    chunks = _chunks(batch)
    assert [len(c) for c in chunks] == [100, 250, 250, 250, 100, 50]
    assert [m for c in chunks for m in c] == batch
    assert [len(c) for c in _chunks(list(range(300)))] == [100, 200]  # no tail when the rest is one chunk


def test_a_product_recommended_twice_is_offered_once(world, monkeypatch):
    from campaigns.recommender.service import Recommendation
    from campaigns.sending import compose

    c = campaign(template=world["template"], segment=world["segment"])
    campaign_start(campaign=c, enqueue=False)
    message = Message.objects.filter(campaign=c, status="planned").select_related("campaign").first()
    a, b = world["products"]["CASE"], world["products"]["CHARGER"]
    twice = [Recommendation(a.pk, 0.9, "r", None), Recommendation(a.pk, 0.8, "r", None)]
    monkeypatch.setattr(
        compose,
        "offers_for_customers",
        lambda **kw: {message.customer_id: [*twice, Recommendation(b.pk, 0.7, "r", None)]},
    )
    offers = compose.offers_pick(messages=[message])[message.pk]
    assert [(o.product["id"], o.rank) for o in offers] == [(a.pk, 1), (b.pk, 2)]


def test_a_chunk_whose_links_fail_keeps_none_of_its_offers_and_sends_nothing(world):
    from django.db import IntegrityError

    from campaigns.sending import compose
    from campaigns.sending.store import Store

    c = campaign(template=world["template"], segment=world["segment"])
    campaign_start(campaign=c, enqueue=False)
    first, second = Message.objects.filter(campaign=c, status="planned").select_related("campaign")[:2]
    handed: list = []

    class Courier:
        def send(self, ready):
            handed.append(ready)

    taken = (first.pk, None, "taken-token", "https://shop.example/", True)
    Store(Courier())._store(compose.offers_pick(messages=[first]), [taken], ["first email"])
    assert handed == [["first email"]]
    offers = compose.offers_pick(messages=[second])
    assert offers[second.pk]
    # The offers insert fine; the link's token is taken, so the COPY fails after them, with Django's
    # IntegrityError as an INSERT would (copy_rows wraps the driver's error).
    taken = (second.pk, None, "taken-token", "https://shop.example/", True)
    with pytest.raises(IntegrityError):  # no atomic() here: _store's is tested
        Store(Courier())._store(offers, [taken], ["x"])
    assert handed == [["first email"]]  # nothing more goes out
    assert not Offer.objects.filter(message=second).exists()  # rolled back with the links


def test_offers_stored_twice_fail_the_chunk(world):
    from django.db import IntegrityError, transaction

    from campaigns.sending import compose

    c = campaign(template=world["template"], segment=world["segment"])
    campaign_start(campaign=c, enqueue=False)
    message = Message.objects.filter(campaign=c, status="planned").select_related("campaign").first()
    offers = compose.offers_pick(messages=[message])
    compose.offers_save(offers)
    for o in offers[message.pk]:
        o.pk, o.token = None, f"other-{o.rank}"  # the same (message, rank) again, new tokens
    with pytest.raises((IntegrityError, RuntimeError)), transaction.atomic():
        compose.offers_save(offers)
    assert Offer.objects.filter(message=message).count() == len(offers[message.pk])


def test_a_batch_tunes_the_interpreter_and_restores_it(world, smtp, monkeypatch):
    import gc
    import sys

    import campaigns.sending as sending

    seen = []
    compose = sending._compose
    monkeypatch.setattr(
        sending,
        "_compose",
        lambda *a: seen.append((sys.getswitchinterval(), gc.get_threshold())) or compose(*a),
    )
    c = campaign(template=world["template"], segment=world["segment"])
    campaign_start(campaign=c, enqueue=False)
    before = (sys.getswitchinterval(), gc.get_threshold())
    assert messages_send(message_ids=sending.messages_due(campaign=c))["sent"] > 0
    assert seen and set(seen) == {(sending.SWITCH_SECONDS, sending.GC_THRESHOLD)} != {before}
    assert (sys.getswitchinterval(), gc.get_threshold()) == before


def test_an_interrupted_exit_stops_the_store_thread_before_the_courier_exits(monkeypatch):
    import threading
    import time

    from campaigns.sending.store import Store

    handed: list = []

    class Courier:
        def send(self, ready):
            handed.append(ready)

    store = Store(Courier())
    store.threaded = True  # as on PostgreSQL outside a transaction; no database is touched below
    started = threading.Event()

    def slow_store(offers, links, ready):
        started.set()
        time.sleep(0.2)
        store.courier.send(ready)

    monkeypatch.setattr(store, "_store", slow_store)
    put, interrupted = store.chunks.put, []

    def interrupted_put(item, *args, **kwargs):
        if item is None and not interrupted:
            interrupted.append(1)
            raise KeyboardInterrupt  # a time limit striking as the caller starts to wait for the thread
        put(item, *args, **kwargs)

    monkeypatch.setattr(store.chunks, "put", interrupted_put)
    with pytest.raises(KeyboardInterrupt), store:
        store.put({}, [], ["first"])
        started.wait(5)
        store.put({}, [], ["second"])  # queued while the first is being stored
    assert not store.thread.is_alive()  # the courier's exit comes after: it sees every email it got
    assert handed == [["first"]]  # the queued chunk was not handed over after the interruption


def test_the_campaign_backend_puts_the_stock_backends_bytes_on_the_wire(world, smtp, settings):
    # The same campaign email through Django's SMTP backend and through ours, to a real SMTP server.
    from django.core.mail import get_connection

    from campaigns.sending.mime import CampaignEmail

    from .test_mime import _stock_masked

    def email():
        message = CampaignEmail(
            subject="Zoë, these go with your order",
            body="Hello Zoë\n\n- Leather case (£29.00)\n",
            from_email="Shöp <offers@shop.example>",
            to=["zoe@example.com"],
            headers={
                "Message-ID": "<abc@shop.example>",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            },
        )
        message.attach_alternative("<p>Hello <b>Zoë</b></p>\n" * 40, "text/html")
        return message

    assert email().wire_bytes() is not None
    for backend in ("django.core.mail.backends.smtp.EmailBackend", "campaigns.sending.backend.EmailBackend"):
        with get_connection(backend) as connection:
            assert connection.send_messages([email()]) == 1
    (stock_from, stock_to, stock_data), (ours_from, ours_to, ours_data) = smtp.envelopes
    assert (ours_from, ours_to) == (stock_from, stock_to) == ("offers@shop.example", ["zoe@example.com"])
    assert _stock_masked(ours_data) == _stock_masked(stock_data)
    assert smtp.messages[1]["Subject"] == "=?utf-8?q?Zo=C3=AB=2C_these_go_with_your_order?="
    # The in-memory backend keeps what the SMTP backend sends: the same envelope and bytes.
    outbox.clear()
    with get_connection("campaigns.sending.backend.MemoryBackend") as connection:
        assert connection.send_messages([email()]) == 1
    [(kept_from, kept_to, kept_data)] = outbox
    assert (kept_from, kept_to) == (stock_from, stock_to)
    assert _stock_masked(kept_data) == _stock_masked(stock_data)
    outbox.clear()


def test_the_memory_backend_refuses_what_the_smtp_backend_refuses(world):
    from django.core.mail import BadHeaderError, get_connection

    from campaigns.sending.mime import CampaignEmail

    outbox.clear()
    email = CampaignEmail(
        subject="Hi\nBcc: x@example.com", body="b", from_email="o@shop.example", to=["a@example.com"]
    )
    email.attach_alternative("<p>b</p>", "text/html")
    with (
        get_connection("campaigns.sending.backend.MemoryBackend") as connection,
        pytest.raises(BadHeaderError),
    ):
        connection.send_messages([email])
    assert outbox == []


def test_a_batch_runs_as_many_statements_for_two_messages_as_for_three(
    world, smtp, django_assert_max_num_queries
):
    # No statement per message: a field the claim does not load, read later, would add one per email.
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from campaigns.sending import messages_due

    c = campaign(template=world["template"], segment=world["segment"])
    campaign_start(campaign=c, enqueue=False)
    ids = messages_due(campaign=c)
    assert len(ids) == 6
    assert messages_send(message_ids=ids[:1])["sent"] == 1  # caches filled (model, template, policy)
    with CaptureQueriesContext(connection) as two:
        assert messages_send(message_ids=ids[1:3])["sent"] == 2
    with django_assert_max_num_queries(len(two)):
        assert messages_send(message_ids=ids[3:])["sent"] == 3
    assert len(smtp.messages) == 6


def _outcomes(c: Campaign) -> dict[str, tuple[str, str]]:
    return {
        email: (status, error)
        for email, status, error in Message.objects.filter(campaign=c)
        .exclude(status__in=["skipped", "holdout"])  # the shop's customers who are not recipients
        .values_list("customer__email", "status", "error")
    }


def _suppressed() -> dict[str, str]:
    return dict(Customer.objects.exclude(suppressed_reason="").values_list("email", "suppressed_reason"))


@pytest.mark.parametrize(
    "where, answer",
    [
        ("MAIL", "553 5.7.1 <offers@shop.example>: Sender address rejected: not owned by user"),
        ("DATA", "550 5.7.1 Message rejected as spam"),
        ("DATA", "554 Message rejected: content"),
        ("DATA", "550 Message rejected"),  # no enhanced status: at DATA, not the mailbox's
        ("RCPT", "550 5.7.1 Relaying denied"),
        ("RCPT", "553 5.1.8 <offers@shop.example>: Sender address rejected: Domain not found"),
        ("DATA", "554 Client host [5.1.20.4] blocked using a block list"),
    ],
)
def test_a_refused_sender_relay_or_content_fails_the_message_and_suppresses_nobody(
    world, smtp, where, answer
):
    async def refuse(*args):
        return answer

    setattr(smtp, f"handle_{where}", refuse)
    suppressed = _suppressed()
    c = campaign(template=world["template"], segment=world["segment"])
    campaign_start(campaign=c, enqueue=False)
    counts = messages_send(message_ids=campaign_batches(campaign=c)[0])
    assert counts["failed"] == 6 and counts["sent"] == 0
    assert {status for status, _ in _outcomes(c).values()} == {"failed"}
    assert _suppressed() == suppressed  # the recipients' mailboxes were never in question


def test_a_bare_550_at_rcpt_is_a_hard_bounce(world, smtp):
    smtp.script["r2@example.com"].append("550 Requested action not taken: mailbox unavailable")
    c = campaign(template=world["template"], segment=world["segment"])
    campaign_start(campaign=c, enqueue=False)
    messages_send(message_ids=campaign_batches(campaign=c)[0])
    assert _suppressed().get("r2@example.com") == "bounced"
    assert len(smtp.messages) == 5


def test_a_421_retries_that_message_and_the_rest_go_out_on_a_new_connection(world, smtp):
    smtp.script["r0@example.com"].append("421 4.7.0 Too many messages, closing connection")
    c = campaign(template=world["template"], segment=world["segment"])
    campaign_start(campaign=c, enqueue=False)
    counts = messages_send(message_ids=campaign_batches(campaign=c)[0])
    assert counts["retry"] == 1 and counts["sent"] == 5 and counts["uncertain"] == 0
    assert _outcomes(c)["r0@example.com"][0] == "planned"
    assert "r0@example.com" not in smtp.count_by_recipient() and len(smtp.messages) == 5


def test_a_connection_lost_before_data_is_retried_and_one_lost_after_data_is_uncertain(world, smtp):
    """The server drops the conversation at one recipient's RCPT (nothing delivered: retried) and after
    another's DATA (it may have the message: uncertain, never resent); the others go out."""
    recorder = smtp
    rcpt, data = recorder.handle_RCPT, recorder.handle_DATA

    async def handle_RCPT(server, session, envelope, address, options):
        if address == "r1@example.com":
            server.transport.close()
            return "250 never read"
        return await rcpt(server, session, envelope, address, options)

    async def handle_DATA(server, session, envelope):
        if envelope.rcpt_tos == ["r3@example.com"]:
            server.transport.close()
            return "250 never read"
        return await data(server, session, envelope)

    recorder.handle_RCPT, recorder.handle_DATA = handle_RCPT, handle_DATA
    c = campaign(template=world["template"], segment=world["segment"])
    campaign_start(campaign=c, enqueue=False)
    counts = messages_send(message_ids=campaign_batches(campaign=c)[0])
    outcomes = _outcomes(c)
    assert outcomes["r1@example.com"][0] == "planned"  # retried
    assert outcomes["r3@example.com"][0] == "uncertain"
    assert counts["sent"] == 4 and counts["retry"] == 1 and counts["uncertain"] == 1
    assert sorted(recorder.count_by_recipient()) == [f"r{i}@example.com" for i in (0, 2, 4, 5)]


def test_when_the_server_is_gone_after_a_lost_data_the_rest_of_the_batch_is_retried(world, smtp):
    from .smtp import SMTPServer

    with SMTPServer() as server:  # a server of this test's own, stopped halfway
        data = server.recorder.handle_DATA

        async def handle_DATA(srv, session, envelope):
            if envelope.rcpt_tos == ["r0@example.com"]:
                server.controller.server.close()  # no more connections
                srv.transport.close()
                return "250 never read"
            return await data(srv, session, envelope)

        server.recorder.handle_DATA = handle_DATA
        from django.conf import settings

        settings.EMAIL_PORT = server.port
        c = campaign(template=world["template"], segment=world["segment"])
        campaign_start(campaign=c, enqueue=False)
        counts = messages_send(message_ids=campaign_batches(campaign=c)[0])
    outcomes = _outcomes(c)
    assert outcomes.pop("r0@example.com")[0] == "uncertain"
    assert {status for status, _ in outcomes.values()} == {"planned"}
    assert counts["uncertain"] == 1 and counts["retry"] == 5
    assert all("cannot reconnect" in error for _, error in outcomes.values())
    deferrals = Message.objects.filter(campaign=c, status="planned").values_list("deferrals", flat=True)
    assert set(deferrals) == {1}  # not offered to the server: not an attempt


def test_an_address_django_refuses_fails_that_message_only(world, smtp):
    Customer.objects.filter(email="r2@example.com").update(email="r2,x@example.com")
    c = campaign(template=world["template"], segment=world["segment"])
    campaign_start(campaign=c, enqueue=False)
    counts = messages_send(message_ids=campaign_batches(campaign=c)[0])
    status, error = _outcomes(c)["r2,x@example.com"]
    assert status == "failed" and "ValueError" in error
    assert counts["failed"] == 1 and counts["sent"] == 5 and counts["uncertain"] == 0


def test_a_backend_that_cannot_be_built_leaves_every_message_to_retry(world, settings):
    settings.EMAIL_BACKEND = "no.such.Backend"
    c = campaign(template=world["template"], segment=world["segment"])
    campaign_start(campaign=c, enqueue=False)
    counts = messages_send(message_ids=campaign_batches(campaign=c)[0])
    assert counts["retry"] == 6
    assert {(status, "cannot connect" in error) for status, error in _outcomes(c).values()} == {
        ("planned", True)
    }


def test_a_sender_with_a_display_name_gives_well_formed_message_ids(world, smtp, settings):
    settings.DEFAULT_FROM_EMAIL = "Shop Offers <offers@shop.example>"
    c = campaign(template=world["template"], segment=world["segment"])
    campaign_start(campaign=c, enqueue=False)
    messages_send(message_ids=campaign_batches(campaign=c)[0])
    mail = smtp.to("r0@example.com")[0]
    message = Message.objects.get(campaign=c, customer__email="r0@example.com")
    assert mail["Message-ID"] == message.message_id == f"<{message.token}@shop.example>"
    assert (
        f"<mailto:unsubscribe@shop.example?subject=unsubscribe%20{message.token}>" in mail["List-Unsubscribe"]
    )
    assert mail["From"] == "Shop Offers <offers@shop.example>"


def test_messages_a_failed_batch_did_not_send_are_planned_again_or_failed_after_the_last_attempt(
    world, settings
):
    from campaigns.sending import _release

    c = campaign(template=world["template"], segment=world["segment"])
    campaign_start(campaign=c, enqueue=False)
    first, last, skipped = Message.objects.filter(campaign=c, status="planned").order_by("pk")[:3]
    Message.objects.filter(pk__in=[first.pk, last.pk]).update(status="sending", attempts=1)
    Message.objects.filter(pk=last.pk).update(attempts=settings.SEND_MAX_ATTEMPTS)
    Message.objects.filter(pk=skipped.pk).update(status="skipped", skip_reason="no_offer")
    _release(list(Message.objects.filter(pk__in=[first.pk, last.pk, skipped.pk])), RuntimeError("boom"))
    first, last, skipped = (Message.objects.get(pk=m.pk) for m in (first, last, skipped))
    assert (first.status, last.status, skipped.status) == ("planned", "failed", "skipped")
    assert first.send_after is not None and "RuntimeError: boom" in first.error and "boom" in last.error
    # Claimed as often, one of the claims a deferral: not the last real attempt yet.
    Message.objects.filter(pk=last.pk).update(
        status="sending", attempts=settings.SEND_MAX_ATTEMPTS, deferrals=1, error=""
    )
    _release(list(Message.objects.filter(pk=last.pk)), RuntimeError("boom"))
    assert Message.objects.get(pk=last.pk).status == "planned"


def test_starting_from_the_admin_shows_a_dry_run_and_sends_only_when_confirmed(world, admin_client):
    from django.urls import reverse

    c = campaign(template=world["template"], segment=world["segment"])
    done = campaign(template=world["template"], segment=world["segment"], name="Old", status="done")
    changelist = reverse("admin:campaigns_campaign_changelist")
    page = admin_client.post(changelist, {"action": "start", "_selected_action": [c.pk, done.pk]})
    assert page.status_code == 200
    text = page.content.decode()
    assert 'http-equiv="refresh"' not in text and "Computed at" in text  # the task ran in the request
    assert "Would be emailed" in text and "r0@example.com" in text and "Yes, start sending" in text
    assert "only a draft can be started" in text
    assert f"Starts: <strong>{c.name}</strong>." in text
    assert "Nobody would be emailed now" not in text
    consenting = Customer.objects.filter(marketing_consent=True)
    ids = list(consenting.values_list("pk", flat=True))
    consenting.update(marketing_consent=False)  # nobody left to mail: said before starting
    empty = admin_client.post(changelist, {"action": "start", "_selected_action": [c.pk]}).content.decode()
    assert "Nobody would be emailed now: starting it sends nothing" in empty
    Customer.objects.filter(pk__in=ids).update(marketing_consent=True)
    c.refresh_from_db()
    assert c.status == Campaign.Status.DRAFT and not c.messages.exists()  # a dry run only
    confirm = {"action": "start", "_selected_action": [c.pk], "confirm": "yes"}
    # A confirmation that carries no finished dry run (forged, or the run expired) starts nothing.
    refused = admin_client.post(changelist, {**confirm, "run": f"{c.pk}:made-up"}, follow=True)
    assert "not started, its dry run is not finished" in refused.content.decode()
    c.refresh_from_db()
    assert c.status == Campaign.Status.DRAFT
    run = re.search(r'name="run" value="([^"]+)"', text).group(1)
    Campaign.objects.filter(pk=c.pk).update(holdout_percent=50)  # changed after its dry run
    refused = admin_client.post(changelist, {**confirm, "run": run}, follow=True)
    assert "not started, its settings changed after its dry run" in refused.content.decode()
    Campaign.objects.filter(pk=c.pk).update(holdout_percent=c.holdout_percent)  # as the dry run saw it
    response = admin_client.post(changelist, {**confirm, "run": run})
    assert response.status_code == 302
    c.refresh_from_db()
    assert c.status == Campaign.Status.SENDING and c.messages.filter(status="planned").count() == 6


def test_the_start_page_shows_a_dry_run_in_progress_then_its_figures_or_its_error(
    world, admin_client, monkeypatch
):
    from campaigns import dry_runs

    c = campaign(template=world["template"], segment=world["segment"])
    token = dry_runs.dry_run_begin(campaign_id=c.pk)  # asked for, its task not run yet
    url = f"{reverse('admin:campaigns_campaign_start')}?run={c.pk}:{token}"
    text = admin_client.get(url).content.decode()
    assert "Computing the dry run: waiting for a worker" in text and 'http-equiv="refresh"' in text
    assert "Yes, start sending" not in text  # nothing to confirm yet
    dry_runs.dry_run_compute(campaign_id=c.pk, token=token)
    text = admin_client.get(url).content.decode()
    assert "Would be emailed" in text and "Yes, start sending" in text and "refresh" not in text
    assert f'name="_selected_action" value="{c.pk}"' in text
    dry_runs.dry_run_compute(campaign_id=c.pk, token=token)  # delivered twice: the figures stay
    assert "Computed at" in admin_client.get(url).content.decode()
    start = reverse("admin:campaigns_campaign_start")
    assert "Nothing to start here" in admin_client.get(f"{start}?run=²:x").content.decode()
    assert admin_client.get(f"{url}&run={c.pk}:{token}").content.decode().count("<h2>") == 1  # once
    monkeypatch.setattr(dry_runs, "campaign_preview", lambda **kw: 1 / 0)
    failing = dry_runs.dry_run_begin(campaign_id=c.pk)
    dry_runs.dry_run_compute(campaign_id=c.pk, token=failing)
    text = admin_client.get(
        f"{reverse('admin:campaigns_campaign_start')}?run={c.pk}:{failing}"
    ).content.decode()
    assert "The dry run failed: ZeroDivisionError" in text and "Yes, start sending" not in text
    text = admin_client.get(f"{reverse('admin:campaigns_campaign_start')}?run={c.pk}:gone").content.decode()
    assert (
        "no longer kept (or cannot be read): select the campaign" in text and "Yes, start sending" not in text
    )
    monkeypatch.undo()
    # The cache is down when Start is chosen: said so, nothing started.
    monkeypatch.setattr(dry_runs.cache, "set", lambda *a, **kw: 1 / 0)
    changelist = reverse("admin:campaigns_campaign_changelist")
    page = admin_client.post(changelist, {"action": "start", "_selected_action": [c.pk]}, follow=True)
    assert "The dry run could not be started (ZeroDivisionError" in page.content.decode()
    monkeypatch.undo()
    steps = []
    from campaigns.planning import campaign_preview

    campaign_preview(campaign=c, on_step=steps.append)
    assert steps == [
        "reading the audience",
        "drawing the holdout",
        "reading the frequency caps",
        "scoring sample offers",
    ]


def test_each_message_is_recorded_sent_at_the_time_its_server_accepted_it(world, smtp):
    import time

    arrived = {}

    def slow_server(parsed):
        time.sleep(0.3)  # a slow ESP: the batch's six emails take 1.8 s
        arrived[parsed["To"]] = timezone.now()

    smtp.on_data = slow_server
    c = campaign(template=world["template"], segment=world["segment"])
    campaign_start(campaign=c, enqueue=False)
    messages_send(message_ids=campaign_batches(campaign=c)[0])
    sent = dict(Message.objects.filter(campaign=c, status="sent").values_list("customer__email", "sent_at"))
    assert len(sent) == 6 and len(set(sent.values())) == 6
    for address, when in sent.items():
        # Not the batch's end (1.5 s after the first was accepted); the margin is for a loaded machine.
        assert abs((when - arrived[address]).total_seconds()) < 0.6, address


def test_a_tick_goes_on_when_a_due_campaign_was_started_meanwhile(world, monkeypatch):
    from campaigns import tasks

    c = campaign(template=world["template"], segment=world["segment"])
    campaign_start(campaign=c, enqueue=False)  # started by another tick since this one read it as due
    monkeypatch.setattr(tasks, "campaigns_due", lambda: [c.pk])
    dispatched = []
    monkeypatch.setattr(tasks.dispatch, "delay", lambda **kwargs: dispatched.append(kwargs["campaign_id"]))
    tasks.tick()
    assert dispatched == [c.pk]  # the sending campaigns were still dispatched
