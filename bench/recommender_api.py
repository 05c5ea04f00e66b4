"""Next-best-offer API latency under load: gunicorn on loopback, a threaded Python client.

    DATABASE_URL=postgres://... .venv/bin/python bench/recommender_api.py --requests 2000 --concurrency 4

Uses the orders and the active model already in the database (train one first with
`manage.py train_recommender`). Prints throughput and latency percentiles of successful requests.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def customer_ids(limit: int) -> list[str]:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "xsell_crm.settings")
    import django

    django.setup()
    from customers.models import Customer

    return list(
        Customer.objects.filter(orders_count__gte=1)
        .order_by("?")
        .values_list("external_id", flat=True)[:limit]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--port", type=int, default=8791)
    parser.add_argument("--k", type=int, default=3)
    args = parser.parse_args()

    token = secrets.token_urlsafe(16)
    ids = customer_ids(1000)
    env = {**os.environ, "API_TOKENS": token, "DEBUG": "0", "SECRET_KEY": "bench", "SECURE_SSL_REDIRECT": "0"}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "xsell_crm.wsgi:application",
            "-w",
            str(args.workers),
            "-b",
            f"127.0.0.1:{args.port}",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
    )
    base = f"http://127.0.0.1:{args.port}/api/v1/customers/{{}}/recommendations?k={args.k}"

    def call(external_id: str) -> tuple[int, float]:
        request = urllib.request.Request(
            base.format(external_id), headers={"Authorization": f"Bearer {token}"}
        )
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                response.read()
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        return status, time.perf_counter() - started

    try:
        for _ in range(100):  # wait for the server
            try:
                call(ids[0])
                break
            except OSError:
                time.sleep(0.2)
        rng = random.Random(1)
        with ThreadPoolExecutor(args.concurrency) as pool:  # warm-up: model load in every worker
            list(pool.map(call, rng.choices(ids, k=args.workers * 20)))
        picks = rng.choices(ids, k=args.requests)
        started = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            results = list(pool.map(call, picks))
        wall = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(timeout=10)
    ok = np.array([t for s, t in results if s == 200]) * 1000
    print(
        f"{len(results)} requests, {len(ok)} OK, concurrency {args.concurrency}, {args.workers} gunicorn workers"
    )
    print(f"throughput {len(results) / wall:.0f} req/s")
    print(
        f"latency ms: p50 {np.percentile(ok, 50):.1f}  p95 {np.percentile(ok, 95):.1f}  p99 {np.percentile(ok, 99):.1f}  max {ok.max():.1f}"
    )


if __name__ == "__main__":
    main()
