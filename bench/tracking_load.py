"""Load the open pixel and the click redirect under gunicorn + PostgreSQL, against a bare Django view.

    .venv/bin/python bench/tracking_load.py [--server postgres://postgres@127.0.0.1:5432]
        [--seconds 60] [--rounds 1] [--workers 3] [--connections 16] [--messages 2000]
        [--buffer [--redis redis://127.0.0.1:6379/14]]

Recreates the database xsell_bench_tracking, migrates it, creates --messages sent messages with one
offer each (the click measured is the offer's link, its own token), starts gunicorn (sync workers, DEBUG
off) on 127.0.0.1, and drives it with wrk (a second process, loopback) for --seconds per endpoint, each
request picking a random message's token. For each of open and click it runs the bare view (same bytes, same middleware, no database) and the
real view in the same run, and prints req/s, their ratio, p50/p99 latency, errors (socket errors and
non-2xx/3xx answers) and events recorded versus requests counted by wrk (wrk does not count requests
still in flight when it stops, so the server may record up to --connections more per run). With
--rounds N the bare and the real view take turns in N runs of --seconds/N each, so a drift in the
machine's speed (a shared virtual machine) affects both alike; their figures are combined (req/s over
the summed time, the worst p99).

With --buffer the server runs with TRACKING_BUFFER=1 and REDIS_URL=--redis (the write-behind buffer of
campaigns.tracking_buffer): after each tracked run the script flushes the queue in-process, timing the
flush, before counting events, and counts the clicks' cache misses (distinct links clicked; every other
click found its URL in Redis). Raise --messages to make first clicks (misses) the common case.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
DB_NAME = "xsell_bench_tracking"
PORT = 8765
UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"

LUA = """
local paths = {}
for line in io.lines("%s") do paths[#paths + 1] = line end
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("thread_number", threads)
end
function init(args)
  -- Each thread its own sequence: seeded with the clock alone, both threads pick the same paths.
  math.randomseed(os.time() * 100 + thread_number)
end
request = function()
  return wrk.format("GET", paths[math.random(#paths)])
end
"""


# The bare view of each tracked route (bench/tracking_urls.py): the pixel, and a redirect for the clicks.
BARE = {"/t/o/": "/bare/o/", "/t/c/": "/bare/c/", "/t/p/": "/bare/c/"}


def database_recreate(*, server: str) -> str:
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    return f"{server}/{DB_NAME}"


def fixtures_create(*, messages: int) -> tuple[list[str], list[str]]:
    """Sent messages, one offer each: (pixel paths, click paths of the offers' links)."""
    import datetime as dt

    from django.urls import reverse
    from django.utils import timezone

    from campaigns.models import Campaign, EmailTemplate, Message, Offer
    from campaigns.tokens import purpose_token
    from customers.models import Customer, Product

    now = timezone.now()
    Customer.objects.bulk_create(
        [
            Customer(external_id=f"b{i}", email=f"b{i}@example.com", marketing_consent=True, consent_at=now)
            for i in range(messages)
        ]
    )
    template = EmailTemplate.objects.create(name="bench", subject="s", html="h", text="t")
    campaign = Campaign.objects.create(name="bench", template=template)
    Message.objects.bulk_create(
        [
            Message(campaign=campaign, customer=c, status="sent", sent_at=now - dt.timedelta(days=1))
            for c in Customer.objects.all()
        ]
    )
    sent = list(Message.objects.all())
    product = Product.objects.create(sku="P1", name="Case", product_url="https://shop.example/p/1")
    Offer.objects.bulk_create(
        [
            Offer(message=m, product=product, rank=1, score=0.5, reason="r", url="https://shop.example/p/1")
            for m in sent
        ]
    )
    pixels = [reverse("track-open", kwargs={"token": purpose_token(m.token, "open")}) for m in sent]
    clicks = [
        reverse("track-offer", kwargs={"token": purpose_token(t, "offer-click")})
        for t in Offer.objects.values_list("token", flat=True)
    ]
    return pixels, clicks


def server_wait(*, url: str, timeout: float = 60) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def wrk_run(*, paths: list[str], seconds: int, connections: int, tmp: Path, name: str) -> dict:
    paths_file = tmp / f"{name}.paths"
    paths_file.write_text("\n".join(paths) + "\n")
    script = tmp / f"{name}.lua"
    script.write_text(LUA % paths_file)
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-H",
            f"User-Agent: {UA}",
            "-s",
            str(script),
            f"http://127.0.0.1:{PORT}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if os.environ.get("BENCH_VERBOSE"):
        print(out)
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non_ok = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non_ok.group(1)) if non_ok else 0) + (sum(map(int, socket.groups())) if socket else 0)
    latency = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", out, re.MULTILINE))
    return {
        "requests": requests,
        "rps": rps,
        "errors": errors,
        "p50": latency.get("50"),
        "p99": latency.get("99"),
    }


def wrk_combine(runs: list[dict]) -> dict:
    """Several wrk runs as one: requests and errors summed, req/s over their summed time, the median of
    their medians and the worst of their 99th percentiles (percentiles of parts do not add up)."""
    seconds = sum(run["requests"] / run["rps"] for run in runs)
    p50s = sorted((_ms(run["p50"]), run["p50"]) for run in runs)
    return {
        "requests": sum(run["requests"] for run in runs),
        "rps": sum(run["requests"] for run in runs) / seconds,
        "errors": sum(run["errors"] for run in runs),
        "p50": p50s[len(p50s) // 2][1],
        "p99": max((_ms(run["p99"]), run["p99"]) for run in runs)[1],
    }


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(\w+)", value).groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", default="postgres://postgres@127.0.0.1:5432")
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument(
        "--rounds", type=int, default=1, help="bare and tracked take turns in this many slices of the time"
    )
    parser.add_argument(
        "--buffer", action="store_true", help="TRACKING_BUFFER=1: queue in Redis, flush after"
    )
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    args = parser.parse_args()

    env = {
        **os.environ,
        "DATABASE_URL": database_recreate(server=args.server),
        "SECRET_KEY": "bench-secret-key-not-for-production",
        "DEBUG": "0",
        "SECURE_SSL_REDIRECT": "0",
        "ALLOWED_HOSTS": "127.0.0.1",
        "SITE_URL": f"http://127.0.0.1:{PORT}",
        "LOG_LEVEL": "WARNING",
        "DJANGO_SETTINGS_MODULE": "tracking_site",
        "PYTHONPATH": f"{ROOT / 'bench'}:{ROOT}",
    }
    if args.buffer:
        env |= {"TRACKING_BUFFER": "1", "REDIS_URL": args.redis}
    os.environ.update(env)
    sys.path[:0] = [str(ROOT / "bench"), str(ROOT)]
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    import django

    django.setup()
    from campaigns.models import Event

    pixels, clicks = fixtures_create(messages=args.messages)
    if args.buffer:
        from campaigns.tracking_buffer import (
            FLUSHING,
            LINK_PREFIX,
            QUEUE,
            buffer_client,
            tracking_buffer_flush,
        )

        buffer_client().delete(QUEUE, FLUSHING, *buffer_client().scan_iter(LINK_PREFIX + "*"))
    server = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("gunicorn")),
            "xsell_crm.wsgi:application",
            "-w",
            str(args.workers),
            "-b",
            f"127.0.0.1:{PORT}",
            "--log-level",
            "warning",
            "--preload",  # load the app once, before forking: every worker starts warm
        ],
        cwd=ROOT,
        env=env,
    )
    try:
        server_wait(url=f"http://127.0.0.1:{PORT}{pixels[0]}")
        with tempfile.TemporaryDirectory() as tmp:
            # Warm every worker's connection and imports before measuring.
            wrk_run(paths=pixels[:50], seconds=3, connections=args.connections, tmp=Path(tmp), name="warm")
            if args.buffer:
                time.sleep(1)  # each worker's last batch reaches Redis within its timer's delay
                tracking_buffer_flush()  # the warm-up's opens are not the run's
            print(
                f"gunicorn -w {args.workers} (sync), wrk -t2 -c{args.connections} -d{args.seconds}s "
                f"in {args.rounds} round(s), "
                f"{args.messages} messages, PostgreSQL"
                + (f", TRACKING_BUFFER=1 (Redis {args.redis})" if args.buffer else "")
            )
            for kind, paths in (("open", pixels), ("click", clicks)):
                bare_paths = [BARE[p[:5]] + p[5:] for p in paths]  # a KeyError for a route it does not know
                random.shuffle(bare_paths)
                before = Event.objects.filter(kind=kind).count()
                # In rounds, bare and tracked taking turns, so a drift of the machine's speed (a shared
                # virtual machine) affects both alike; each gets --seconds in all.
                slices = {"bare": [], kind: []}
                for _ in range(args.rounds):
                    for name, run_paths in (("bare", bare_paths), (kind, paths)):
                        slices[name].append(
                            wrk_run(
                                paths=run_paths,
                                seconds=args.seconds // args.rounds,
                                connections=args.connections,
                                tmp=Path(tmp),
                                name=name,
                            )
                        )
                bare, real = wrk_combine(slices["bare"]), wrk_combine(slices[kind])
                time.sleep(1)
                flushed = ""
                if args.buffer:
                    started = time.perf_counter()
                    count = tracking_buffer_flush()
                    seconds = time.perf_counter() - started
                    flushed = f" (flush {count} in {seconds:.1f} s, {count / max(seconds, 1e-9):,.0f}/s)"
                    if kind == "click":
                        looked_up = sum(1 for _ in buffer_client().scan_iter(LINK_PREFIX + "*", count=10_000))
                        flushed += f", {looked_up} distinct links read from the database (cache misses)"
                recorded = Event.objects.filter(kind=kind).count() - before
                print(
                    f"{kind:5}  bare {bare['rps']:8.0f} req/s p99 {bare['p99']}, errors {bare['errors']} | "
                    f"tracked {real['rps']:8.0f} req/s p50 {real['p50']} p99 {real['p99']}, errors {real['errors']} | "
                    f"ratio {real['rps'] / bare['rps']:.2f} | requests {real['requests']}, events {recorded}{flushed}"
                )
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
