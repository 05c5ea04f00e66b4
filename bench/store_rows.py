"""What PostgreSQL spends writing one email's rows in the send's store stage, as a chunk of 250 emails is
written: its 3 offers, each with the URL its link leads to (since 0014), against the rows it took before,
3 offers and 4 tracked links (the offers' clicks and the honeypot), with and without the foreign-key
checks.

    .venv/bin/python bench/store_rows.py [--database xsell_bench_send120] [--repeat 15]

Needs a bench shop with planned messages (bench/campaign_throughput.py leaves some). Every chunk is
written in a transaction that is rolled back: nothing is kept. The foreign keys are DEFERRABLE
INITIALLY DEFERRED (Django's), so a send checks them at its commit: here SET CONSTRAINTS ALL IMMEDIATE
counts them in the COPY that writes the rows, and a run without it (rolled back, so never checked)
shows the rows alone. Times are wall µs per email, the median of --repeat chunks, client included
(psycopg's COPY formatting, a few µs).
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import time

import psycopg

CHUNK = 250
OFFER_COLUMNS = "id, message_id, product_id, rank, score, reason, model_version_id, token, created_at"
URL = "https://shop.example/products/SKU123?ref=mail&utm_source=xsell&utm_medium=email&utm_campaign=spring"
LINK_COLUMNS = "message_id, offer_id, token, url, is_honeypot"


def chunk_write(
    cursor, messages, products, version, *, links: bool, urls: bool, checked: bool
) -> tuple[float, float]:
    """Seconds writing the chunk's offers, then its links."""
    if checked:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    cursor.execute(
        "SELECT nextval(pg_get_serial_sequence('campaigns_offer', 'id')) FROM generate_series(1, %s)",
        [len(messages) * len(products)],
    )
    ids = iter([row[0] for row in cursor.fetchall()])
    offers = [
        (
            next(ids),
            m,
            p,
            rank,
            0.5,
            "Goes with the phone you bought on 3 May",
            version,
            secrets.token_hex(11),
        )
        for m in messages
        for rank, p in enumerate(products, start=1)
    ]
    started = time.perf_counter()
    columns, url = (f"{OFFER_COLUMNS}, url", (URL,)) if urls else (OFFER_COLUMNS, ())
    with cursor.copy(f"COPY campaigns_offer ({columns}) FROM STDIN") as copy:
        for row in offers:
            copy.write_row((*row, "2026-01-01 00:00:00+00", *url))
    offered = time.perf_counter()
    if links:
        rows = [(o[1], o[0], secrets.token_hex(11), URL, False) for o in offers]
        rows += [(m, None, secrets.token_hex(11), "https://shop.example/", True) for m in messages]
        with cursor.copy(f"COPY campaigns_trackedlink ({LINK_COLUMNS}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
    return offered - started, time.perf_counter() - offered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database", default="xsell_bench_send120")
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{args.database}") as conn:
        cursor = conn.cursor()
        cursor.execute(
            "SELECT m.id FROM campaigns_message m WHERE NOT EXISTS "
            "(SELECT 1 FROM campaigns_offer o WHERE o.message_id = m.id) ORDER BY m.id DESC LIMIT %s",
            [CHUNK],
        )
        messages = [row[0] for row in cursor.fetchall()]
        cursor.execute("SELECT id FROM customers_product ORDER BY id LIMIT 3")
        products = [row[0] for row in cursor.fetchall()]
        cursor.execute("SELECT id FROM campaigns_modelversion WHERE is_active")
        version = cursor.fetchone()[0]
        conn.rollback()
        if len(messages) < CHUNK:
            raise SystemExit(f"needs {CHUNK} messages without offers; found {len(messages)}")
        print(f"{CHUNK} emails a chunk; wall µs per email, median of {args.repeat}")
        for label, kwargs in (
            ("now: 3 offers with URLs, checked", {"links": False, "urls": True, "checked": True}),
            ("now: 3 offers with URLs, not checked", {"links": False, "urls": True, "checked": False}),
            ("before: 3 offers, 4 links, checked", {"links": True, "urls": False, "checked": True}),
            ("before: 3 offers, 4 links, not checked", {"links": True, "urls": False, "checked": False}),
        ):
            times = []
            for _ in range(args.repeat):
                times.append(chunk_write(cursor, messages, products, version, **kwargs))
                conn.rollback()
            offers = statistics.median(t[0] for t in times) / CHUNK * 1e6
            links = statistics.median(t[1] for t in times) / CHUNK * 1e6
            print(f"{label:<42} offers {offers:5.0f}  links {links:5.0f}  both {offers + links:5.0f}")


if __name__ == "__main__":
    main()
