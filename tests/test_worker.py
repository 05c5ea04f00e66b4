"""Real Celery workers (prefork, 4 processes) on Redis and PostgreSQL: caps hold under concurrency."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

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


def _wait_until_settled(campaign_ids: list[int], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Message.objects.filter(
            campaign_id__in=campaign_ids, status__in=("planned", "sending")
        ).exists():
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
