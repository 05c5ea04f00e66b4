"""Time the demo shop generator at 100k and 1M customers, each into a fresh PostgreSQL database.

    .venv/bin/python bench/generate_demo_data.py [--sizes 100000 1000000] [--seed 7] [--end YYYY-MM-DD]
                                                 [--server postgres://postgres@127.0.0.1:5432]

For each size it (re)creates the database xsell_bench_100k / xsell_bench_1m, migrates it, then runs
`manage.py generate_demo_data --customers N --seed S -v 0` in a child process and prints customers,
orders, order lines, wall seconds, order lines per second, the child's peak RSS (the Python process;
the PostgreSQL server's memory is not included) and the database size. The databases are left in place
for other benchmarks and for training the recommender on.
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


def database_name(*, customers: int) -> str:
    if customers % 1_000_000 == 0:
        return f"xsell_bench_{customers // 1_000_000}m"
    if customers % 1000 == 0:
        return f"xsell_bench_{customers // 1000}k"
    return f"xsell_bench_{customers}"


def database_recreate(*, server: str, name: str) -> str:
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{server}/{name}"


def database_size(*, url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]


def run_measured(*, args: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    """Run a child process; returns (seconds, peak RSS in bytes, stdout)."""
    started = time.perf_counter()
    child = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    out = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code:
        sys.exit(f"{' '.join(args)} failed with exit code {code}:\n{out}")
    return seconds, usage.ru_maxrss * 1024, out


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
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--end", help="last day of the history, exclusive (default: today)")
    opts = parser.parse_args()

    for customers in opts.sizes:
        name = database_name(customers=customers)
        url = database_recreate(server=opts.server, name=name)
        env = {**os.environ, "DATABASE_URL": url, "DJANGO_SETTINGS_MODULE": "xsell_crm.settings"}
        env.pop("REDIS_URL", None)
        manage = [sys.executable, "manage.py"]
        subprocess.run([*manage, "migrate", "--noinput", "-v", "0"], env=env, cwd=ROOT, check=True)
        flags = ["--customers", str(customers), "--seed", str(opts.seed)]
        flags += ["--end", opts.end] if opts.end else []
        seconds, rss, out = run_measured(args=[*manage, "generate_demo_data", *flags, "-v", "0"], env=env)
        lines = summary_value(output=out, label="order lines")
        print(f"\nmanage.py generate_demo_data {' '.join(flags)}  ->  database {name} (fresh, migrated)")
        print(f"  customers:     {summary_value(output=out, label='customers'):,}")
        print(f"  orders:        {summary_value(output=out, label='orders'):,}")
        print(f"  order lines:   {lines:,}")
        print(f"  seconds:       {seconds:.1f}")
        print(f"  lines/s:       {lines / seconds:,.0f}")
        print(f"  peak RSS:      {rss / 2**20:,.0f} MiB")
        print(f"  database size: {database_size(url=url) / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
