"""Frequency policy: window count, minimum gap, quiet hours in the customer's time zone."""

import datetime as dt

import pytest

from campaigns.caps import CapLedger, quiet_hours_end
from campaigns.lifecycle import campaign_start
from campaigns.models import FrequencyPolicy, Message
from campaigns.sending import messages_claim, messages_due

from .campaign_fixtures import campaign, shop

pytestmark = pytest.mark.django_db
UTC = dt.UTC


def test_quiet_hours_spanning_midnight_in_the_customers_zone():
    policy = FrequencyPolicy(name="q", quiet_start=dt.time(21), quiet_end=dt.time(8))
    # 22:30 in Tokyo is 13:30 UTC: quiet until 08:00 Tokyo = 23:00 UTC the same day.
    now = dt.datetime(2026, 5, 1, 13, 30, tzinfo=UTC)
    assert quiet_hours_end(policy=policy, timezone_name="Asia/Tokyo", now=now) == dt.datetime(
        2026, 5, 1, 23, 0, tzinfo=UTC
    )
    # 06:00 in Tokyo (21:00 UTC the day before): quiet until 08:00 Tokyo.
    early = dt.datetime(2026, 4, 30, 21, 0, tzinfo=UTC)
    assert quiet_hours_end(policy=policy, timezone_name="Asia/Tokyo", now=early) == dt.datetime(
        2026, 4, 30, 23, 0, tzinfo=UTC
    )
    # 13:30 in London: not quiet.
    assert quiet_hours_end(policy=policy, timezone_name="Europe/London", now=now) is None
    # An unknown zone falls back to UTC instead of failing the send.
    assert quiet_hours_end(policy=policy, timezone_name="Mars/Base", now=now) is None


def test_window_and_gap():
    world = shop(recipients=1)
    customer = world["recipients"][0]
    c = campaign(template=world["template"], segment=world["segment"])
    now = dt.datetime(2026, 5, 1, 12, tzinfo=UTC)
    Message.objects.create(
        campaign=c,
        customer=customer,
        status="sent",
        claimed_at=now - dt.timedelta(hours=3),
        sent_at=now - dt.timedelta(hours=3),
    )
    gap = FrequencyPolicy(name="gap", max_messages=5, window_days=7, min_gap_hours=24)
    assert (
        CapLedger(policy=gap, customer_ids=[customer.pk], now=now)
        .check(customer_id=customer.pk, timezone_name="UTC")
        .reason
        == "capped"
    )
    loose = FrequencyPolicy(name="loose", max_messages=2, window_days=7, min_gap_hours=1)
    ledger = CapLedger(policy=loose, customer_ids=[customer.pk], now=now)
    assert ledger.check(customer_id=customer.pk, timezone_name="UTC").allowed
    ledger.record(customer_id=customer.pk)
    assert not ledger.check(customer_id=customer.pk, timezone_name="UTC").allowed  # 2 in the window now
    later = now + dt.timedelta(days=8)
    assert (
        CapLedger(policy=loose, customer_ids=[customer.pk], now=later)
        .check(customer_id=customer.pk, timezone_name="UTC")
        .allowed
    )


def test_a_message_in_quiet_hours_waits_instead_of_being_lost():
    world = shop(recipients=1)
    customer = world["recipients"][0]
    type(customer).objects.filter(pk=customer.pk).update(timezone="Asia/Tokyo")
    FrequencyPolicy.objects.filter(is_default=True).update(quiet_start=dt.time(21), quiet_end=dt.time(8))
    c = campaign(template=world["template"], segment=world["segment"])
    campaign_start(campaign=c, enqueue=False)
    now = dt.datetime(2026, 5, 1, 13, 30, tzinfo=UTC)  # 22:30 in Tokyo
    Message.objects.filter(campaign=c).update(created_at=now)
    ids = messages_due(campaign=c, now=now)
    assert messages_claim(message_ids=ids, now=now) == []
    m = Message.objects.get(campaign=c, customer=customer)
    assert m.status == "planned" and m.send_after == dt.datetime(2026, 5, 1, 23, 0, tzinfo=UTC)
    assert messages_due(campaign=c, now=now + dt.timedelta(hours=2)) == []
    after = dt.datetime(2026, 5, 1, 23, 1, tzinfo=UTC)
    assert [x.pk for x in messages_claim(message_ids=messages_due(campaign=c, now=after), now=after)] == [
        m.pk
    ]


def test_quiet_hours_past_the_deadline_skip_the_message():
    world = shop(recipients=1)
    customer = world["recipients"][0]
    type(customer).objects.filter(pk=customer.pk).update(timezone="Asia/Tokyo")
    FrequencyPolicy.objects.filter(is_default=True).update(
        quiet_start=dt.time(21), quiet_end=dt.time(8), quiet_deadline_hours=2
    )
    c = campaign(template=world["template"], segment=world["segment"])
    campaign_start(campaign=c, enqueue=False)
    now = dt.datetime(2026, 5, 1, 13, 30, tzinfo=UTC)
    Message.objects.filter(campaign=c).update(created_at=now)
    messages_claim(message_ids=messages_due(campaign=c, now=now), now=now)
    m = Message.objects.get(campaign=c, customer=customer)
    assert (m.status, m.skip_reason) == ("skipped", "quiet_hours")


@pytest.mark.django_db(transaction=True)
def test_the_cap_index_migration_runs_again_after_a_run_that_failed_past_its_build():
    import importlib

    from django.apps import apps
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("CREATE INDEX CONCURRENTLY is PostgreSQL's")
    migration = importlib.import_module("campaigns.migrations.0006_message_customer_claimed_index")
    with connection.schema_editor(atomic=False) as editor:
        editor.execute("CREATE INDEX message_customer_sent_idx ON campaigns_message (customer_id, sent_at)")
        migration.forwards(apps, editor)  # the new index exists already, and the old one again
    with connection.cursor() as cursor:
        indexes = connection.introspection.get_constraints(cursor, "campaigns_message")
    assert "message_customer_claimed_idx" in indexes and "message_customer_sent_idx" not in indexes
    assert indexes["message_customer_claimed_idx"]["columns"] == ["customer_id", "claimed_at"]


def test_a_gap_longer_than_the_window_still_holds():
    world = shop(recipients=1)
    customer = world["recipients"][0]
    c = campaign(template=world["template"], segment=world["segment"])
    now = dt.datetime(2026, 5, 3, 12, tzinfo=UTC)
    sent = now - dt.timedelta(hours=30)  # outside a one-day window, inside a 48-hour gap
    Message.objects.create(campaign=c, customer=customer, status="sent", claimed_at=sent, sent_at=sent)
    policy = FrequencyPolicy(name="g", max_messages=1, window_days=1, min_gap_hours=48)
    ledger = CapLedger(policy=policy, customer_ids=[customer.pk], now=now)
    assert ledger.check(customer_id=customer.pk, timezone_name="UTC").reason == "capped"
    later = CapLedger(policy=policy, customer_ids=[customer.pk], now=now + dt.timedelta(hours=19))
    assert later.check(customer_id=customer.pk, timezone_name="UTC").allowed  # 49 hours after


def test_quiet_hours_that_start_when_they_end_are_refused():
    from django.core.exceptions import ValidationError
    from django.db import IntegrityError, transaction

    policy = FrequencyPolicy(name="q", quiet_start=dt.time(9), quiet_end=dt.time(9))
    with pytest.raises(ValidationError, match="Quiet hours must start and end at different times"):
        policy.full_clean()
    with pytest.raises(IntegrityError), transaction.atomic():
        policy.save()
    # A policy stored before the constraint is read as no quiet hours, never as quiet all day.
    now = dt.datetime(2026, 5, 1, 12, tzinfo=UTC)
    assert quiet_hours_end(policy=policy, timezone_name="UTC", now=now) is None
