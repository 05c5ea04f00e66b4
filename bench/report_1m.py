"""Time the campaign report of a 1,000,000-message campaign on PostgreSQL.

    .venv/bin/python bench/report_1m.py [--server postgres://postgres@127.0.0.1:5432] [--messages 1000000] [--reuse] [--profile]

Creates (or, with --reuse, keeps) the database xsell_bench_report, migrates it and writes with COPY
(customers.bulk.bulk_insert): one customer per message, a campaign of --messages messages (89% sent,
10% holdout, the rest suppressed or capped), 2 offers per sent message, ESP delivered events for every
sent message, bounces, human and machine opens and clicks, acceptances, unsubscribes, complaints, orders
in the attribution window and conversions for both groups. Then it times campaign_report() (every query),
the admin report page recomputed (?refresh=1) and from cached figures, through the test Client (3 runs
each), and prints the figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg

ROOT = Path(__file__).resolve().parents[1]
DB_NAME = "xsell_bench_report"
T0 = pd.Timestamp("2026-03-02 09:00", tz="UTC")


def database_prepare(*, server: str, name: str, reuse: bool) -> str:
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not (reuse and exists):
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
    return f"{server}/{name}"


def seconds(rng: np.random.Generator, n: int, days: float) -> pd.TimedeltaIndex:
    return pd.to_timedelta(rng.uniform(0, days * 86400, n), unit="s")


def data_generate(*, n: int, seed: int = 1) -> int:
    """Write the campaign; returns its id."""
    from django.contrib.auth.models import User
    from django.db import connection

    from campaigns.models import (
        Campaign,
        CampaignRun,
        Conversion,
        EmailTemplate,
        Event,
        Message,
        ModelVersion,
        Offer,
    )
    from customers.bulk import bulk_insert
    from customers.models import Customer, Order, OrderLine, Product

    rng = np.random.default_rng(seed)
    now = pd.Timestamp.now(tz="UTC")
    ids = np.arange(1, n + 1)
    orders_count = rng.integers(1, 12, n)
    first = T0 - seconds(rng, n, 900) - pd.Timedelta(days=30)
    last = np.minimum(first + seconds(rng, n, 900), T0 + pd.Timedelta(days=20))
    bulk_insert(
        Customer,
        pd.DataFrame(
            {
                "id": ids,
                "external_id": [f"b{i}" for i in ids],
                "email": [f"b{i}@example.com" for i in ids],
                "first_name": "",
                "last_name": "",
                "country": "",
                "timezone": "UTC",
                "marketing_consent": True,
                "consent_at": T0 - pd.Timedelta(days=1000),
                "consent_source": "bench",
                "suppressed_reason": "",
                "orders_count": orders_count,
                "total_spent": (orders_count * rng.uniform(10, 80, n)).round(2),
                "first_order_at": first,
                "last_order_at": last,
                "created_at": now,
                "updated_at": now,
            }
        ),
    )
    products = Product.objects.bulk_create(
        [Product(sku=f"SKU{i}", name=f"Product {i}", price=10 + i % 50) for i in range(500)]
    )
    product_ids = np.array([p.pk for p in products])
    template = EmailTemplate.objects.create(name="bench", subject="Hi", html="<p>hi</p>", text="hi")
    campaign = Campaign.objects.create(name="Bench 1M", template=template, status="done", started_at=T0)
    run = CampaignRun.objects.create(campaign=campaign, key="once", planned_at=T0)
    version = ModelVersion.objects.create(algorithm="bench", artefact="bench.joblib")

    draw = rng.random(n)
    status = np.select(
        [draw < 0.89, draw < 0.99, draw < 0.996], ["sent", "holdout", "skipped"], default="skipped"
    )
    skip = np.where(status != "skipped", "", np.where(draw < 0.996, "suppressed", "capped"))
    sent = status == "sent"
    sent_at = pd.Series(T0 + seconds(rng, n, 2)).where(sent)
    message_frame = pd.DataFrame(
        {
            "id": ids,
            "campaign_id": campaign.pk,
            "run_id": run.pk,
            "customer_id": ids,
            "status": status,
            "skip_reason": skip,
            "token": [f"m{i}" for i in ids],
            "created_at": T0,
            "sent_at": sent_at,
            "attempts": sent.astype(int),
            "message_id": "",
            "error": "",
            "is_simulated": False,
        }
    )
    sent_ids = ids[sent]
    m = len(sent_ids)
    first_product = rng.integers(0, len(product_ids) - 1, m)
    offer_ids = np.arange(1, 2 * m + 1)
    offer_frame = pd.DataFrame(
        {
            "id": offer_ids,
            "message_id": np.repeat(sent_ids, 2),
            "product_id": product_ids[np.column_stack([first_product, first_product + 1]).ravel()],
            "rank": np.tile([1, 2], m),
            "score": rng.random(2 * m).round(4),
            "reason": "bought together",
            "model_version_id": version.pk,
            "token": [f"o{i}" for i in offer_ids],
            "created_at": T0,
        }
    )
    sent_time = sent_at[sent].to_numpy()

    def events(kind: str, share: float, machine: float = 0.0, offer_rank1: bool = False) -> pd.DataFrame:
        pick = rng.random(m) < share
        idx = np.flatnonzero(pick)
        return pd.DataFrame(
            {
                "kind": kind,
                "message_id": sent_ids[idx],
                "campaign_id": campaign.pk,
                "offer_id": (2 * idx + 1) if offer_rank1 else np.nan,
                "customer_id": sent_ids[idx],
                "occurred_at": pd.DatetimeIndex(sent_time[idx]) + seconds(rng, len(idx), 5),
                "user_agent": "",
                "ip_hash": "",
                "is_machine": rng.random(len(idx)) < machine,
                "machine_reason": "",
                "is_simulated": False,
                "meta": "{}",
            }
        )

    frames = [
        events("delivered", 0.99),
        events("bounce", 0.01),
        events("open", 0.35, machine=0.15),
        events("open", 0.10),  # repeat opens
        events("click", 0.07, machine=0.1),
        events("accept", 0.02, offer_rank1=True),
        events("unsubscribe", 0.002),
        events("complaint", 0.0003),
    ]
    event_frame = pd.concat(frames, ignore_index=True)
    event_frame["offer_id"] = event_frame["offer_id"].astype("Int64")
    # The messages' first-touch columns, as the tracking paths keep them (Event.FIRST_TOUCH).
    for kind, fields in Event.FIRST_TOUCH.items():
        hits = event_frame[event_frame["kind"].isin([kind])]
        if kind in Event.HUMAN_ONLY:
            hits = hits[~hits["is_machine"]]
        first = hits.groupby("message_id")["occurred_at"].min()
        for field in fields:
            earlier = message_frame.get(
                field, pd.Series(pd.NaT, index=message_frame.index, dtype=first.dtype)
            )
            touch = message_frame["id"].map(first)
            message_frame[field] = touch.where(~(earlier < touch) & touch.notna(), earlier)
    bulk_insert(Message, message_frame)
    bulk_insert(Offer, offer_frame)
    bulk_insert(Event, event_frame)

    # Orders in the window: 5% of recipients and 4% of the holdout; a third of recipients' orders and
    # a quarter of the holdout's are conversions.
    holdout_ids = ids[status == "holdout"]
    rec_buyers = rng.choice(np.arange(m), int(m * 0.05), replace=False)
    hold_buyers = rng.choice(holdout_ids, int(len(holdout_ids) * 0.04), replace=False)
    buyers = np.concatenate([sent_ids[rec_buyers], hold_buyers])
    k = len(buyers)
    order_ids = np.arange(1, k + 1)
    n_lines = rng.integers(1, 4, k)
    line_order = np.repeat(order_ids, n_lines)
    line_no = np.concatenate([np.arange(1, c + 1) for c in n_lines])
    offered_first = np.concatenate(
        [first_product[rec_buyers], rng.integers(0, len(product_ids) - 1, len(hold_buyers))]
    )
    line_product = product_ids[(np.repeat(offered_first, n_lines) + line_no - 1) % len(product_ids)]
    unit_price = rng.uniform(5, 60, len(line_order)).round(2)
    totals = pd.Series(unit_price).groupby(line_order).sum().round(2).to_numpy()
    placed = T0 + pd.Timedelta(days=2) + seconds(rng, k, 10)
    bulk_insert(
        Order,
        pd.DataFrame(
            {
                "id": order_ids,
                "external_id": [f"bo{i}" for i in order_ids],
                "customer_id": buyers,
                "placed_at": placed,
                "total": totals,
                "currency": "GBP",
                "channel": "web",
                "status": "placed",
                "content_hash": "",
                "created_at": now,
            }
        ),
    )
    bulk_insert(
        OrderLine,
        pd.DataFrame(
            {
                "order_id": line_order,
                "line_no": line_no,
                "product_id": line_product,
                "quantity": 1,
                "unit_price": unit_price,
            }
        ),
    )
    first_line = np.concatenate([[0], np.cumsum(n_lines)[:-1]])
    converts = rng.random(k) < np.where(np.arange(k) < len(rec_buyers), 0.33, 0.25)
    is_holdout = np.arange(k) >= len(rec_buyers)
    pick = np.flatnonzero(converts)
    hold = is_holdout[pick]
    offer = pd.array(2 * rec_buyers[np.where(hold, 0, pick)] + 1, dtype="Int64")
    offer[hold] = pd.NA
    bulk_insert(
        Conversion,
        pd.DataFrame(
            {
                "message_id": buyers[pick],
                "offer_id": offer,
                "order_id": order_ids[pick],
                "product_id": line_product[first_line[pick]],
                "revenue": unit_price[first_line[pick]],
                "is_holdout": hold,
                "is_simulated": False,
                "attributed_at": now,
            }
        ),
    )
    with connection.cursor() as cursor:
        for model in (Customer, Product, Order, OrderLine, Message, Offer, Event, Conversion):
            table = model._meta.db_table
            cursor.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"
            )
    User.objects.create_superuser("bench", "bench@example.com", "bench")
    return campaign.pk


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--server", default="postgres://postgres@127.0.0.1:5432")
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--reuse", action="store_true", help="keep the database if it already has the data")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="print each query's time in one report")
    opts = parser.parse_args()

    os.environ["DATABASE_URL"] = database_prepare(server=opts.server, name=DB_NAME, reuse=opts.reuse)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "xsell_crm.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.urls import reverse

    from campaigns.models import Campaign, Event, Message
    from campaigns.reports import campaign_report

    settings.ALLOWED_HOSTS = ["*"]
    call_command("migrate", verbosity=0)
    campaign = Campaign.objects.filter(name="Bench 1M").first()
    if campaign is None:
        started = time.perf_counter()
        campaign_id = data_generate(n=opts.messages)
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")
        print(f"generated in {time.perf_counter() - started:.1f} s")
        campaign = Campaign.objects.get(pk=campaign_id)
    print(
        f"messages: {Message.objects.filter(campaign=campaign).count()}, "
        f"events: {Event.objects.filter(message__campaign=campaign).count()}"
    )

    def timed(fn) -> list[float]:
        out = []
        for _ in range(opts.runs):
            started = time.perf_counter()
            fn()
            out.append(time.perf_counter() - started)
        return out

    if opts.profile:
        from django.test.utils import CaptureQueriesContext

        with CaptureQueriesContext(connection) as ctx:
            campaign_report(campaign=campaign)
        for query in sorted(ctx.captured_queries, key=lambda q: -float(q["time"])):
            print(f"{float(query['time']):7.2f} s  {' '.join(query['sql'].split())[:110]}")
    report_times = timed(lambda: campaign_report(campaign=campaign))
    client = Client()
    client.force_login(User.objects.get(username="bench"))
    url = reverse("admin:campaigns_campaign_report", args=[campaign.pk])

    def page(query: str = ""):
        response = client.get(url + query)
        assert response.status_code == 200, response.status_code

    cold_times = timed(lambda: page("?refresh=1"))
    warm_times = timed(page)
    report = campaign_report(campaign=campaign)
    c = report["counts"]
    print(
        f"sent {c['sent']}, holdout {c['holdout']}, delivered {c['delivered']}, opened {c['opened']}, "
        f"clicked {c['clicked']}, accepted {c['accepted']}, converted {c['converted']}, "
        f"uplift {report['uplift_conversion']['diff']:.4f} ({report['uplift_conversion']['verdict']})"
    )
    with open("/proc/loadavg") as f:
        print(f"1-minute load average after the runs (2 cores, shared machine): {f.read().split()[0]}")
    rows = (
        ("campaign_report() (all queries)", report_times),
        ("report page, recomputed (?refresh=1)", cold_times),
        ("report page, cached figures", warm_times),
    )
    for label, values in rows:
        print(
            f"{label}: median {statistics.median(values):.2f} s, "
            f"min {min(values):.2f} s, max {max(values):.2f} s over {len(values)} runs"
        )


if __name__ == "__main__":
    main()
