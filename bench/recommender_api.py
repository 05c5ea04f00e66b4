"""Next-best-offer API latency under wrk: gunicorn on loopback, wrk in a second process.

    DATABASE_URL=postgres://... .venv/bin/python bench/recommender_api.py [--seconds 30] [--connections 4]
        [--workers 2] [--customers 2000] [--anchors] [--no-refresh]

Uses the orders and the active model already in the database (train one first with
`manage.py train_recommender --activate`). Unless --no-refresh, first stores every customer's offers
(`campaigns.recommender.stored.offers_refresh`, timed), as the nightly task does. Then starts gunicorn
(sync workers, DEBUG off), warms every worker up (the model is loaded once per process), and drives
random customers with orders (--anchors: each with their last order as the anchor, which is always
scored live) through `bench/recommender_api.lua` for --seconds. Prints wrk's latency distribution and
the script's p95.
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def django_setup() -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "xsell_crm.settings")
    import django

    django.setup()


def paths(limit: int, anchors: bool) -> list[str]:
    from django.db.models import Max

    from customers.models import Customer, Order

    customers = list(
        Customer.objects.filter(orders_count__gte=1).order_by("?").values_list("pk", "external_id")[:limit]
    )
    if not anchors:
        return [f"{external_id}" for _, external_id in customers]
    last = dict(
        Order.objects.filter(customer__in=[pk for pk, _ in customers], status=Order.Status.PLACED)
        .values("customer_id")
        .annotate(at=Max("placed_at"))
        .values_list("customer_id", "at")
    )
    orders = {
        customer: external_id
        for customer, external_id, placed_at in Order.objects.filter(
            customer__in=list(last), status=Order.Status.PLACED
        ).values_list("customer_id", "external_id", "placed_at")
        if placed_at == last[customer]
    }
    return [f"{external_id} {orders[pk]}" for pk, external_id in customers if pk in orders]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--port", type=int, default=8791)
    parser.add_argument("--anchors", action="store_true", help="ask with each customer's last order")
    parser.add_argument(
        "--no-refresh", action="store_true", help="do not store every customer's offers first"
    )
    args = parser.parse_args()
    django_setup()
    if not args.no_refresh:
        from campaigns.recommender.stored import offers_refresh

        started = time.perf_counter()
        stored = offers_refresh()
        print(f"stored offers of {stored} customers in {time.perf_counter() - started:.1f} s")

    token = secrets.token_urlsafe(16)
    lines = paths(args.customers, args.anchors)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as ids:
        ids.write("\n".join(lines) + "\n")
    env = {**os.environ, "API_TOKENS": token, "DEBUG": "0", "SECRET_KEY": "bench", "SECURE_SSL_REDIRECT": "0"}
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "xsell_crm.wsgi:application", "-w", str(args.workers)]
        + ["-b", f"127.0.0.1:{args.port}", "--log-level", "warning"],
        cwd=ROOT,
        env=env,
    )
    first = lines[0].split()
    query = f"?k=3&anchor_order={first[1]}" if len(first) > 1 else "?k=3"
    warm = urllib.request.Request(
        f"http://127.0.0.1:{args.port}/api/v1/customers/{first[0]}/recommendations{query}",
        headers={"Authorization": f"Bearer {token}"},
    )
    try:
        for _ in range(150):  # wait for the server
            try:
                urllib.request.urlopen(warm, timeout=30).read()
                break
            except OSError:
                time.sleep(0.2)
        for _ in range(args.workers * 10):  # every worker loads the model before the clock starts
            urllib.request.urlopen(warm, timeout=30).read()
        load = os.getloadavg()
        print(
            f"{len(lines)} customers{' with anchors' if args.anchors else ''}, gunicorn {args.workers} workers, "
            f"wrk -t1 -c{args.connections} -d{args.seconds}s, load average {load[0]:.2f}"
        )
        subprocess.run(
            ["wrk", "-t1", f"-c{args.connections}", f"-d{args.seconds}s", "--latency"]
            + ["-s", str(ROOT / "bench" / "recommender_api.lua"), f"http://127.0.0.1:{args.port}"],
            env={**os.environ, "IDS_FILE": ids.name, "API_TOKEN": token},
            check=True,
        )
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    finally:
        server.terminate()
        server.wait(timeout=10)
        os.unlink(ids.name)


if __name__ == "__main__":
    main()
