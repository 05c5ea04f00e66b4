"""Real Celery workers (prefork, 4 processes) on Redis and PostgreSQL: caps hold under concurrency."""

from __future__ import annotations

import datetime as dt
import html
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from django.db.models import Count
from django.utils.timezone import now as timezone_now

from campaigns.lifecycle import campaign_start
from campaigns.models import FrequencyPolicy, Message
from campaigns.tasks import dispatch
from xsell_crm.celery import app

from .campaign_fixtures import campaign, shop
from .smtp import SMTPServer

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.real_worker,
    pytest.mark.skipif(
        not (os.environ.get("REDIS_URL") and os.environ.get("DATABASE_URL", "").startswith("postgres")),
        reason="needs PostgreSQL and Redis (DATABASE_URL, REDIS_URL)",
    ),
]


def _worker(smtp_port: int) -> subprocess.Popen:
    db = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "EMAIL_URL": f"smtp://127.0.0.1:{smtp_port}",
        "SEND_RETRY_BASE_SECONDS": "0",
        "XSELL_VAR_DIR": str(Path(settings.MODEL_DIR).parent),
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "xsell_crm",
            "worker",
            "-c",
            "4",
            "-P",
            "prefork",
            "-l",
            "warning",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _wait_until_settled(campaign_ids: list[int], timeout: float = 120, allow_sending: bool = False) -> None:
    """Until no message is planned (nor sending, unless a killed worker left some claimed)."""
    busy = ("planned",) if allow_sending else ("planned", "sending")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Message.objects.filter(campaign_id__in=campaign_ids, status__in=busy).exists():
            return
        time.sleep(0.5)
    raise AssertionError("messages still planned or sending after the timeout")


@pytest.mark.django_db(transaction=True)
def test_ten_campaigns_on_four_worker_processes_respect_a_cap_of_one():
    world = shop(recipients=20, history=10)
    FrequencyPolicy.objects.filter(is_default=True).update(max_messages=1, window_days=7, min_gap_hours=0)
    campaigns = [
        campaign(template=world["template"], segment=world["segment"], name=f"Same people {i}")
        for i in range(10)
    ]
    for c in campaigns:
        campaign_start(campaign=c, enqueue=False)
    app.control.purge()
    with SMTPServer() as smtp:
        worker = _worker(smtp.port)
        try:
            for c in campaigns:
                dispatch.delay(campaign_id=c.pk)
            _wait_until_settled([c.pk for c in campaigns])
        finally:
            worker.terminate()
            worker.wait(timeout=30)
        counts = smtp.recorder.count_by_recipient()
    assert counts == {p.email: 1 for p in world["recipients"]}
    recipients = Message.objects.filter(customer__in=world["recipients"])
    assert recipients.filter(status="sent").count() == 20
    assert recipients.filter(status="skipped", skip_reason="capped").count() == 9 * 20


def _bulk_recipients(world: dict, n: int) -> list[str]:
    """n consenting customers who each just bought a phone, created in a few statements."""
    from django.utils import timezone

    from customers.importing import customer_stats_refresh
    from customers.models import Customer, Order, OrderLine

    now = timezone.now()
    Customer.objects.bulk_create(
        Customer(external_id=f"K{i}", email=f"k{i}@example.com", marketing_consent=True, consent_at=now)
        for i in range(n)
    )
    customers = list(Customer.objects.filter(external_id__startswith="K"))
    Order.objects.bulk_create(
        Order(external_id=f"KO{c.pk}", customer=c, placed_at=now - timezone.timedelta(hours=30), total=799)
        for c in customers
    )
    phone = world["products"]["PHONE"]
    OrderLine.objects.bulk_create(
        OrderLine(order=o, line_no=1, product=phone, quantity=1, unit_price=799)
        for o in Order.objects.filter(external_id__startswith="KO")
    )
    customer_stats_refresh()
    return [c.email for c in customers]


@pytest.mark.django_db(transaction=True)
def test_worker_killed_mid_campaign_then_restarted_sends_nobody_twice_and_loses_nobody():
    import signal

    from campaigns.sending import messages_sweep_stuck

    world = shop(recipients=0, history=30)
    emails = _bulk_recipients(world, 5000)
    FrequencyPolicy.objects.filter(is_default=True).update(max_messages=5)
    c = campaign(template=world["template"], segment=world["segment"], name="Big one")
    campaign_start(campaign=c, enqueue=False)
    app.control.purge()
    with SMTPServer() as smtp:
        worker = _worker(smtp.port)
        dispatch.delay(campaign_id=c.pk)
        deadline = time.monotonic() + 180
        while len(smtp.recorder.messages) < 800 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(smtp.recorder.messages) >= 800, "the worker did not get going"
        # SIGKILL the worker and its pool processes: no cleanup, claimed messages stay "sending".
        for pid in _process_tree(worker.pid):
            os.kill(pid, signal.SIGKILL)
        worker.wait(timeout=30)
        killed_at = len(smtp.recorder.messages)
        assert killed_at < 5000, "the campaign finished before the kill; nothing was tested"
        app.control.purge()  # what the dead worker had prefetched or left unacknowledged
        worker = _worker(smtp.port)
        try:
            dispatch.delay(campaign_id=c.pk)  # the next beat tick
            _wait_until_settled([c.pk], timeout=300, allow_sending=True)
        finally:
            worker.terminate()
            worker.wait(timeout=30)
        counts = smtp.recorder.count_by_recipient()
    messages_sweep_stuck(now=timezone_now() + dt.timedelta(hours=1))
    assert max(counts.values()) == 1  # nobody got two emails
    statuses = dict(
        Message.objects.filter(campaign=c, customer__email__in=emails)
        .values_list("status")
        .annotate(n=Count("pk"))
        .order_by()
    )
    assert set(statuses) <= {"sent", "uncertain"}, statuses  # none lost, none left planned or sending
    assert sum(statuses.values()) == 5000
    sent = set(Message.objects.filter(campaign=c, status="sent").values_list("customer__email", flat=True))
    assert sent <= set(counts)  # every message recorded sent was received
    assert len(counts) >= statuses.get("sent", 0)


def _process_tree(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    children = [int(p) for p in out.split()]
    return [pid] + [q for child in children for q in _process_tree(child)]


@pytest.mark.django_db(transaction=True)
def test_the_admins_dry_run_is_computed_by_a_worker_while_its_page_shows_progress(admin_client):
    from django.urls import reverse

    world = shop(recipients=8, history=5)
    c = campaign(template=world["template"], segment=world["segment"])
    app.control.purge()
    changelist = reverse("admin:campaigns_campaign_changelist")
    text = admin_client.post(changelist, {"action": "start", "_selected_action": [c.pk]}).content.decode()
    assert "Computing the dry run" in text  # no worker yet
    page = html.unescape(re.search(r'http-equiv="refresh" content="2;url=([^"]+)"', text).group(1))
    assert "Computing the dry run" in admin_client.get(page).content.decode()  # the page it reloads
    with SMTPServer() as smtp:
        worker = _worker(smtp.port)
        try:
            deadline = time.monotonic() + 60
            while "Computing the dry run" in (text := admin_client.get(page).content.decode()):
                assert time.monotonic() < deadline, "the dry run did not finish"
                time.sleep(0.5)
        finally:
            worker.terminate()
            worker.wait(timeout=30)
    assert "Would be emailed" in text and "Yes, start sending" in text and "@example.com" in text
    c.refresh_from_db()
    assert c.status == "draft" and not c.messages.exists()  # a dry run only
