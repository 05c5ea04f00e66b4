"""Campaign throughput: the whole pipeline over SMTP, beside the SMTP limit and django-post-office.

    .venv/bin/python bench/campaign_throughput.py [--recipients 100000] [--workers 1] [--skip-postoffice]
        [--stored-offers] [--skip-locmem] [--memory-only [--stages]]
        [--database xsell_bench_send] [--postoffice-database xsell_bench_postoffice] [--profile]

Needs a prepared shop database (a copy of a generate_demo_data shop, migrated, with an active model):

    createdb -h 127.0.0.1 -U postgres -T xsell_bench_100k xsell_bench_send
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/xsell_bench_send .venv/bin/python manage.py migrate
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/xsell_bench_send \
        .venv/bin/python manage.py train_recommender --activate

and `pip install "django-post-office>=3.9,<4"` for (b). In one run it

1. starts an aiosmtpd sink in its own process (counts messages, answers 250) on a free loopback port;
2. gives marketing consent to exactly --recipients mailable customers (the first by id) and makes a
   segment of the consenting, so each one-off campaign (holdout 0, 3 offers, the demo template) plans
   exactly that many messages; earlier bench campaigns' claims are moved 30 days back so the frequency
   cap (2 per 7 days, 24 h gap) does not skip anyone twice;
3. in-memory pipeline: one process, emails/s, with the campaign backend's MemoryBackend (the SMTP
   backend with the network left out: the same checks and bytes, kept in a list cleared after every
   batch), then (unless --skip-locmem) with Django's locmem backend, which builds every email's MIME
   tree and keeps a deep copy of it, work the SMTP path does not do;
4. the limit: N copies of one email rendered in step 3, built with the pipeline's email class and
   pushed by the SMTP backend EMAIL_URL selects (the pipeline's: campaigns.sending.backend) with
   send_messages in chunks of 1,000 over one connection to the sink, emails/s;
5. end to end: a second campaign planned (timed) and sent by --workers processes, each calling
   messages_send on its share of the batches over SMTP to the sink; emails/s with and without planning;
6. django-post-office (own database, recreated): queue N templated emails with post_office.mail.send
   (priority medium) then send them with send_queued until done (its defaults: batches of 100, 5
   threads), emails/s for queue + send.

Worker processes load Django and the model before the clock starts (a long-running worker pays that
once). Each step prints the 1/5/15-minute load average before and after it: the machine is shared.
"""

from __future__ import annotations

import argparse
import os
import queue
import socket
import subprocess
import sys
import time
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVER = "postgres://postgres@127.0.0.1:5432"
REDIS_URL = "redis://127.0.0.1:6379/10"
LOCMEM = "django.core.mail.backends.locmem.EmailBackend"
MEMORY = "campaigns.sending.backend.MemoryBackend"  # the SMTP backend with the network left out
SMTP_CHUNK = 1000
SEGMENT = "Bench: consenting customers"
TEMPLATE = "Bench: add-ons"

PO_SUBJECT = "{{ first_name|default:'Hello' }}, these go with your order"
PO_HTML = """<h1 style="font-size:22px">Thanks for your order, {{ first_name|default:"friend" }}!</h1>
<p>A few things that go well with what you just bought:</p>
{% for offer in offers %}
<div class="offer">
  <a href="{{ offer.url }}"><strong>{{ offer.name }}</strong></a>
  <span> {{ offer.price }} GBP</span>
  <div class="reason">{{ offer.reason }}</div>
  <p><a class="button" href="{{ offer.accept_url }}">Add to my order</a></p>
</div>
{% endfor %}
<p><a href="{{ offer_page_url }}">See all your offers</a></p>
<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>"""
PO_TEXT = """Thanks for your order, {{ first_name|default:"friend" }}!

A few things that go well with what you just bought:
{% for offer in offers %}
- {{ offer.name }} ({{ offer.price }} GBP): {{ offer.reason }}
  {{ offer.url }}
{% endfor %}
All your offers: {{ offer_page_url }}
Unsubscribe: {{ unsubscribe_url }}"""


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def django_setup(
    *, database_url: str, email_url: str = "", email_backend: str = "", settings_module: str = ""
):
    os.environ["DATABASE_URL"] = database_url
    os.environ["REDIS_URL"] = REDIS_URL
    os.environ["DJANGO_SETTINGS_MODULE"] = settings_module or "xsell_crm.settings"
    # Production shape: DEBUG off (no query log kept per statement), quiet logs.
    os.environ.setdefault("SECRET_KEY", "bench-only-not-secret")
    os.environ["DEBUG"] = "0"
    os.environ["LOG_LEVEL"] = "WARNING"
    os.environ.pop("EMAIL_URL", None)
    if email_url:
        os.environ["EMAIL_URL"] = email_url
    if email_backend:
        os.environ["EMAIL_BACKEND"] = email_backend
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import django

    django.setup()


# ------------------------------------------------------------------------------------------------ sink


def sink_serve(*, port, counter, ready) -> None:
    from aiosmtpd.controller import Controller

    class Count:
        async def handle_DATA(self, server, session, envelope):
            counter.value += 1  # one event loop thread writes it
            return "250 Message accepted"

    controller = Controller(Count(), hostname="127.0.0.1", port=port)
    controller.start()
    ready.set()
    while True:
        time.sleep(3600)


# --------------------------------------------------------------------------------------------- shop


def audience_prepare(*, recipients: int) -> None:
    """Consent for exactly `recipients` mailable customers; earlier bench claims moved out of the cap window."""
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM customers_customer WHERE suppressed_reason = '' AND email <> ''")
        available = cur.fetchone()[0]
        if available < recipients:
            raise SystemExit(f"only {available} customers have an email and are not suppressed")
        cur.execute(
            """UPDATE customers_customer c SET marketing_consent = chosen.id IS NOT NULL,
                   consent_at = COALESCE(c.consent_at, now())
               FROM customers_customer c2 LEFT JOIN (
                   SELECT id FROM customers_customer WHERE suppressed_reason = '' AND email <> ''
                   ORDER BY id LIMIT %s) chosen ON chosen.id = c2.id
               WHERE c.id = c2.id""",
            [recipients],
        )
        cur.execute(
            "UPDATE campaigns_message SET claimed_at = claimed_at - interval '30 days' "
            "WHERE claimed_at > now() - interval '30 days'"
        )
        cur.execute("ANALYZE customers_customer")
        cur.execute("ANALYZE campaigns_message")


def campaign_new(*, label: str):
    from campaigns.caps import policy_default
    from campaigns.demo import DEMO_HTML, DEMO_TEXT
    from campaigns.models import Campaign, EmailTemplate, Segment

    policy_default()
    segment, _ = Segment.objects.get_or_create(
        name=SEGMENT,
        defaults={
            "rules": {"op": "and", "rules": [{"field": "marketing_consent", "op": "=", "value": True}]}
        },
    )
    template, _ = EmailTemplate.objects.get_or_create(
        name=TEMPLATE,
        defaults={
            "subject": "{{ customer.first_name or 'Hello' }}, these go with your order",
            "html": DEMO_HTML,
            "text": DEMO_TEXT,
        },
    )
    return Campaign.objects.create(
        name=f"Bench {label} {time.strftime('%Y-%m-%d %H:%M:%S')}",
        kind=Campaign.Kind.ONE_OFF,
        segment=segment,
        template=template,
        holdout_percent=0,
        offers_per_email=3,
    )


def campaign_plan_timed(*, campaign) -> tuple[list[list[int]], float]:
    from campaigns.lifecycle import campaign_batches, campaign_start

    t0 = time.perf_counter()
    campaign_start(campaign=campaign, enqueue=False)
    batches = campaign_batches(campaign=campaign)
    return batches, time.perf_counter() - t0


# ------------------------------------------------------------------------------------------- workers


def stages_timed() -> dict[str, float]:
    """Wrap the steps of messages_send with timers: wall seconds per step, summed over the run. The store
    stage runs in its own thread beside the caller's steps; its lines are indented under it."""
    import campaigns.sending as sending
    from campaigns.sending import deliver, store

    seconds: dict[str, float] = {}

    def timed(owner, name: str, key: str) -> None:
        inner = getattr(owner, name)

        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - started

        setattr(owner, name, wrapper)

    for owner, name, key in (
        (sending, "messages_claim", "claim"),
        (sending, "offers_pick", "offers picked"),
        (sending, "messages_build", "emails built (render, CSS, headers)"),
        (store.Store, "put", "waiting to hand a chunk to the store stage"),
        (store.Store, "__exit__", "end of batch: waiting for the store stage"),
        (deliver.Courier, "__exit__", "end of batch: waiting for the courier"),
        (store.Store, "_store", "store stage (its own thread)"),
        (store, "offers_save", "    offers written"),
        (store, "links_store", "    links written"),
        (deliver.Courier, "send", "    handed to the courier, outcomes recorded"),
    ):
        timed(owner, name, key)
    return seconds


def worker_send(
    *, database_url, email_url, email_backend, batches, barrier, results, profile, stages=False
) -> None:
    """One worker process: set up, warm up, wait for the start, send its batches."""
    django_setup(database_url=database_url, email_url=email_url, email_backend=email_backend)
    timings = stages_timed() if stages else {}
    from django.core import mail

    from campaigns.recommender import recommend_for_customers
    from campaigns.sending import backend, messages_send
    from customers.models import Customer

    recommend_for_customers(
        customer_ids=[Customer.objects.order_by("pk").values_list("pk", flat=True)[0]], k=3
    )
    totals: dict[str, int] = {}
    sample = None
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
    barrier.wait()
    t0, cpu0 = time.perf_counter(), time.process_time()
    if profiler:
        profiler.enable()
    for ids in batches:
        for name, n in messages_send(message_ids=ids).items():
            totals[name] = totals.get(name, 0) + n
        if email_backend == MEMORY:
            if sample is None and backend.outbox:
                sample = email_parts(backend.outbox[0].data)
            backend.outbox.clear()  # bounded memory
        elif email_backend == LOCMEM:
            getattr(mail, "outbox", []).clear()
    if profiler:
        profiler.disable()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    profile_text = ""
    if profiler:
        import io
        import pstats

        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(15)
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(15)
        profile_text = out.getvalue()
    results.put(
        {
            "totals": totals,
            "seconds": seconds,
            "cpu": cpu,
            "sample": sample,
            "profile": profile_text,
            "stages": timings,
        }
    )


def email_parts(data: bytes) -> dict:
    """The parts of an email the pipeline sent (its bytes), to build the same email again."""
    import email
    from email import policy

    parsed = email.message_from_bytes(data, policy=policy.default)
    return {
        "subject": str(parsed["Subject"]),
        "body": parsed.get_body(("plain",)).get_content(),
        "from_email": str(parsed["From"]),
        "to": [str(parsed["To"])],
        "headers": {
            name: str(parsed[name])
            for name in (
                "Message-ID",
                "List-Unsubscribe",
                "List-Unsubscribe-Post",
                "X-Xsell-Campaign",
                "X-Xsell-Message",
            )
        },
        "html": parsed.get_body(("html",)).get_content(),
    }


def pipeline_run(
    *, database_url, email_url, email_backend, batches, workers, profile=False, stages=False
) -> dict:
    ctx = get_context("spawn")
    barrier = ctx.Barrier(workers + 1)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=worker_send,
            kwargs={
                "database_url": database_url,
                "email_url": email_url,
                "email_backend": email_backend,
                "batches": batches[i::workers],
                "barrier": barrier,
                "results": results,
                "profile": profile,
                "stages": stages,
            },
        )
        for i in range(workers)
    ]
    for p in procs:
        p.start()
    barrier.wait()
    t0 = time.perf_counter()
    outs = []
    while len(outs) < len(procs):
        try:
            outs.append(results.get(timeout=5))
        except queue.Empty:
            if any(p.exitcode not in (None, 0) for p in procs):
                raise SystemExit("a worker process died (its traceback is above)") from None
    seconds = time.perf_counter() - t0
    for p in procs:
        p.join()
    totals: dict[str, int] = {}
    for out in outs:
        for name, n in out["totals"].items():
            totals[name] = totals.get(name, 0) + n
    return {
        "seconds": seconds,
        "cpu": sum(o["cpu"] for o in outs),
        "totals": totals,
        "sample": next((o["sample"] for o in outs if o["sample"]), None),
        "profile": "\n".join(o["profile"] for o in outs if o["profile"]),
        "stages": outs[0]["stages"],
    }


# --------------------------------------------------------------------------------------------- limit


def limit_send(*, email_url, parts, n, results) -> None:
    django_setup(database_url=f"{SERVER}/postgres", email_url=email_url)
    from django.core.mail import get_connection

    from campaigns.sending.mime import CampaignEmail  # the class the pipeline sends: same serialiser

    messages = []
    for _ in range(n):
        email = CampaignEmail(
            subject=parts["subject"],
            body=parts["body"],
            from_email=parts["from_email"],
            to=parts["to"],
            headers=parts["headers"],
        )
        email.attach_alternative(parts["html"], "text/html")
        messages.append(email)
    connection = get_connection(fail_silently=False)
    connection.open()
    t0, cpu0 = time.perf_counter(), time.process_time()
    sent = 0
    for start in range(0, n, SMTP_CHUNK):
        sent += connection.send_messages(messages[start : start + SMTP_CHUNK])
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    connection.close()
    results.put({"sent": sent, "seconds": seconds, "cpu": cpu})


# ------------------------------------------------------------------------------------- post office


def postoffice_run(*, database_url, email_url, n, results) -> None:
    import tempfile

    django_setup(database_url=database_url, email_url=email_url, settings_module="bench.postoffice_settings")
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from post_office import mail
    from post_office.models import STATUS, Email, EmailTemplate

    template = EmailTemplate.objects.create(
        name="bench-addons", subject=PO_SUBJECT, content=PO_TEXT, html_content=PO_HTML
    )
    offers = [
        {
            "name": f"Product {j}",
            "price": f"{9 + j}.99",
            "reason": "Often bought with what you ordered",
            "url": f"https://shop.example/t/c/{j}",
            "accept_url": f"https://shop.example/t/a/{j}",
        }
        for j in range(3)
    ]
    t0 = time.perf_counter()
    for i in range(n):
        mail.send(
            recipients=[f"customer{i}@example.com"],
            sender="offers@shop.example",
            template=template,
            context={
                "first_name": f"Name{i}",
                "offers": offers,
                "offer_page_url": f"https://shop.example/o/{i}",
                "unsubscribe_url": f"https://shop.example/u/{i}",
            },
            priority="medium",
        )
    queued = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        mail.send_queued_mail_until_done(lockfile=str(Path(tmp) / "post_office"), processes=1)
    seconds = time.perf_counter() - t0
    sent = Email.objects.filter(status=STATUS.sent).count()
    results.put({"sent": sent, "queue_seconds": queued, "seconds": seconds})


def database_recreate(*, name: str) -> str:
    import psycopg

    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{SERVER}/{name}"


def child_run(target, **kwargs) -> dict:
    ctx = get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=target, kwargs={**kwargs, "results": results})
    proc.start()
    out = results.get()
    proc.join()
    return out


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--skip-postoffice", action="store_true")
    parser.add_argument(
        "--skip-locmem", action="store_true", help="leave out the in-memory run with Django's locmem backend"
    )
    parser.add_argument(
        "--batch-size", type=int, default=0, help="SEND_BATCH_SIZE for planning (default: the setting's)"
    )
    parser.add_argument(
        "--stored-offers",
        action="store_true",
        help="store every customer's offers first (the nightly refresh); default: none, all scored live",
    )
    parser.add_argument("--database", default="xsell_bench_send")
    parser.add_argument("--postoffice-database", default="xsell_bench_postoffice")
    parser.add_argument(
        "--profile", action="store_true", help="only the in-memory pipeline, under cProfile (top 15)"
    )
    parser.add_argument(
        "--memory-only", action="store_true", help="only the in-memory pipeline (the per-process target)"
    )
    parser.add_argument(
        "--stages",
        action="store_true",
        help="with --memory-only: wall time per step of a batch, in µs per email sent (timers add a little)",
    )
    args = parser.parse_args()
    n = args.recipients
    if args.batch_size:
        os.environ["SEND_BATCH_SIZE"] = str(args.batch_size)  # read by settings, here and in the workers
    database_url = f"{SERVER}/{args.database}"
    django_setup(database_url=database_url, email_backend=LOCMEM)
    from django.core.management import call_command

    from campaigns.models import ModelVersion

    call_command("migrate", verbosity=0)  # the code may be newer than the copied database
    if not ModelVersion.objects.filter(is_active=True).exists():
        raise SystemExit("no active model: run manage.py train_recommender --activate on that database")
    from campaigns.models import StoredOffers

    if args.stored_offers:
        from campaigns.recommender.stored import offers_refresh

        started = time.perf_counter()
        stored = offers_refresh()
        print(
            f"stored offers of {stored} customers in {time.perf_counter() - started:.1f} s (before the clock)"
        )
    else:
        StoredOffers.objects.all().delete()
        print("no stored offers: every offer is scored live")

    ctx = get_context("spawn")
    port = free_port()
    counter, ready = ctx.RawValue("q", 0), ctx.Event()
    sink = ctx.Process(
        target=sink_serve, kwargs={"port": port, "counter": counter, "ready": ready}, daemon=True
    )
    sink.start()
    ready.wait(30)
    email_url = f"smtp://127.0.0.1:{port}"
    rows: dict[str, dict] = {}
    head = subprocess.run(
        ["git", "-C", str(ROOT), "log", "-1", "--format=%h %s"], capture_output=True, text=True
    ).stdout.strip()
    print(f"code: {head}")
    from django.conf import settings

    print(f"batches of {settings.SEND_BATCH_SIZE} messages")
    print(f"recipients {n}, workers {args.workers}, sink on 127.0.0.1:{port}, load avg 1/5/15 min: {load()}")

    def step(name: str) -> dict:
        row = {"load_start": load(), "sink_before": counter.value}
        rows[name] = row
        return row

    def done(row: dict, emails: int, seconds: float) -> None:
        row.update(emails=emails, seconds=seconds, rate=emails / seconds, load_end=load())
        row["sink"] = counter.value - row["sink_before"]

    def campaign_step(name: str, *, label: str, **run) -> tuple[dict, dict, float]:
        """A fresh one-off campaign to the audience: the step's row, pipeline_run's result, planning's
        seconds (timed, not in pipeline_run's)."""
        audience_prepare(recipients=n)
        row = step(name)
        batches, plan_seconds = campaign_plan_timed(campaign=campaign_new(label=label))
        return row, pipeline_run(database_url=database_url, batches=batches, **run), plan_seconds

    try:
        # In-memory pipeline: the campaign backend with the network left out (also renders the typical
        # email the limit pushes), then Django's locmem backend for comparison.
        sample = None
        for label, email_backend in (("campaign backend", MEMORY), ("Django's locmem", LOCMEM)):
            if email_backend == LOCMEM and args.skip_locmem:
                continue
            row, out, plan_seconds = campaign_step(
                f"in-memory pipeline, 1 process, {label}",
                label="in-memory",
                email_url="",
                email_backend=email_backend,
                workers=1,
                profile=args.profile,
                stages=args.stages,
            )
            done(row, out["totals"].get("sent", 0), out["seconds"])
            row["note"] = (
                f"plan {plan_seconds:.1f} s not included; worker CPU {out['cpu']:.1f} s "
                f"({row['emails'] / out['cpu']:,.0f} emails per CPU-second); {out['totals']}"
            )
            print(f"in-memory ({label}): {row}")
            if args.profile:
                print(out["profile"])
                return
            for name, seconds in out["stages"].items():
                print(f"  {name:<48} {seconds / max(row['emails'], 1) * 1e6:6.0f} µs per email")
            if args.memory_only:
                return
            sample = sample or out["sample"]

        row = step("limit: pre-rendered, 1 SMTP connection")
        out = child_run(limit_send, email_url=email_url, parts=sample, n=n)
        done(row, out["sent"], out["seconds"])
        row["note"] = f"sender CPU {out['cpu']:.1f} s (the rest is waiting for the sink's answers)"
        print(f"limit: {row}")

        row, out, plan_seconds = campaign_step(
            f"end to end, {args.workers} worker(s), planning included",
            label="smtp",
            email_url=email_url,
            email_backend="",
            workers=args.workers,
        )
        sent = out["totals"].get("sent", 0)
        done(row, sent, plan_seconds + out["seconds"])
        row["note"] = (
            f"plan {plan_seconds:.1f} s + send {out['seconds']:.1f} s; workers' CPU {out['cpu']:.1f} s; "
            f"{out['totals']}"
        )
        rows[f"end to end, {args.workers} worker(s), sending only"] = {
            **row,
            "seconds": out["seconds"],
            "rate": sent / out["seconds"],
            "note": "same run, planning excluded",
        }
        print(f"end to end: {row}")

        if not args.skip_postoffice:
            po_url = database_recreate(name=args.postoffice_database)
            row = step("django-post-office: queue + send_queued")
            out = child_run(postoffice_run, database_url=po_url, email_url=email_url, n=n)
            done(row, out["sent"], out["seconds"])
            row["note"] = (
                f"queue {out['queue_seconds']:.1f} s + send {out['seconds'] - out['queue_seconds']:.1f} s"
            )
            print(f"post office: {row}")
    finally:
        sink.terminate()

    limit = rows["limit: pre-rendered, 1 SMTP connection"]["rate"]
    po = rows.get("django-post-office: queue + send_queued", {}).get("rate")
    print()
    print(
        "| step | emails | seconds | emails/s | x limit | x post-office | sink got | load avg start → end |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    order = [
        "limit: pre-rendered, 1 SMTP connection",
        f"end to end, {args.workers} worker(s), planning included",
        f"end to end, {args.workers} worker(s), sending only",
        "django-post-office: queue + send_queued",
        "in-memory pipeline, 1 process, campaign backend",
        "in-memory pipeline, 1 process, Django's locmem",
    ]
    for name in order:
        if name not in rows:
            continue
        r = rows[name]
        x_po = f"{r['rate'] / po:.2f}" if po else "—"
        print(
            f"| {name} | {r['emails']:,} | {r['seconds']:.1f} | {r['rate']:,.0f} | {r['rate'] / limit:.2f} | "
            f"{x_po} | {r.get('sink', '—')} | {r['load_start']} → {r['load_end']} |"
        )
    for name in order:
        if rows.get(name, {}).get("note"):
            print(f"{name}: {rows[name]['note']}")


if __name__ == "__main__":
    main()
