"""Time the orders import of the real data set into a fresh PostgreSQL database.

    .venv/bin/python bench/import_orders.py [--server postgres://postgres@127.0.0.1:5432]

Creates (or recreates) the database xsell_bench_import, migrates it, then runs
`manage.py import_orders ../shared/data/online_retail/orders.csv.gz --customers ...customers.csv.gz`
twice (first import, then a re-import of the same files) in a child process each, and prints lines
read, order lines written, wall seconds, lines read per second, the child's CPU seconds and peak RSS.
The wall time includes the process start (Django and pandas imports) and the commit.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "online_retail"
DB_NAME = "xsell_bench_import"
CHILD = """
import sys, time
import django
from django.core.management import call_command
django.setup()
started = time.perf_counter()
call_command(*sys.argv[1:])
print(f"command seconds: {time.perf_counter() - started:.3f}")
"""


def database_recreate(*, server: str, name: str) -> str:
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{server}/{name}"


def run_measured(*, args: list[str], env: dict[str, str]) -> tuple[float, float, int, str]:
    """Run a child process; returns (wall seconds, CPU seconds, peak RSS in bytes, stdout)."""
    started = time.perf_counter()
    child = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    out = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        sys.exit(f"{' '.join(args)} failed with exit code {child.returncode}:\n{out}")
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024, out


def summary_value(*, output: str, label: str) -> int:
    match = re.search(rf"^{re.escape(label)}: (\d+)$", output, re.MULTILINE)
    return int(match.group(1)) if match else 0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--server", default="postgres://postgres@127.0.0.1:5432", help="PostgreSQL server URL"
    )
    parser.add_argument("--orders", default=str(DATA / "orders.csv.gz"))
    parser.add_argument("--customers", default=str(DATA / "customers.csv.gz"))
    opts = parser.parse_args()

    url = database_recreate(server=opts.server, name=DB_NAME)
    # Tasks the import triggers (planning, attribution) are queued for workers, not run in the timed
    # process: an in-memory broker with eager execution off.
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "DJANGO_SETTINGS_MODULE": "xsell_crm.settings",
        "CELERY_TASK_ALWAYS_EAGER": "0",
    }
    env.pop("REDIS_URL", None)
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "--noinput", "-v", "0"], env=env, cwd=ROOT, check=True)

    # The child is `manage.py import_orders …` run through call_command, so that the Django start-up
    # (settings, apps, admin modules) can be told apart from the import itself.
    child = [
        sys.executable,
        "-c",
        CHILD,
        "import_orders",
        opts.orders,
        "--customers",
        opts.customers,
        "--verbosity",
        "0",
    ]
    print(f"database: {DB_NAME} (fresh, migrated); load average before: {os.getloadavg()[0]:.2f}")
    print(
        f"command: manage.py import_orders {Path(opts.orders).name} --customers {Path(opts.customers).name}"
    )
    for label in ("first import", "re-import"):
        seconds, cpu, rss, out = run_measured(args=child, env=env)
        read = summary_value(output=out, label="rows read")
        written = summary_value(output=out, label="order lines written")
        importing = float(re.search(r"^command seconds: ([\d.]+)$", out, re.MULTILINE).group(1))
        print(f"\n{label}:")
        print(f"  lines read:                  {read:,}")
        print(f"  order lines written:         {written:,}")
        print(
            f"  orders created / unchanged:  {summary_value(output=out, label='orders created'):,} / "
            f"{summary_value(output=out, label='orders unchanged'):,}"
        )
        print(f"  seconds, whole process:      {seconds:.2f}  ({read / seconds:,.0f} lines read/s)")
        print(f"  seconds, import after start: {importing:.2f}  ({read / importing:,.0f} lines read/s)")
        print(f"  CPU seconds of the process:  {cpu:.2f}")
        print(f"  peak RSS of the process:     {rss / 2**20:,.0f} MiB")
    print(f"\nload average after: {os.getloadavg()[0]:.2f} (2 cores: above ~2 the figures are contended)")


if __name__ == "__main__":
    main()
