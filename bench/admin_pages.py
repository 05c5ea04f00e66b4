"""Time the busiest admin pages on a big database (default: the 1M-customer demo shop).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/xsell_bench_1m .venv/bin/python bench/admin_pages.py

Prints, per page, the median wall time of 5 requests through Django's test client and the number of
SQL queries, so an N+1 or a full-table count shows up as a number.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "xsell_crm.settings")

import django  # noqa: E402

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.db import connection, reset_queries  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

from customers.models import Customer, Order  # noqa: E402


def main() -> None:
    user, _ = get_user_model().objects.get_or_create(
        username="bench-admin", defaults={"is_staff": True, "is_superuser": True}
    )
    client = Client()
    client.force_login(user)
    customer = Customer.objects.filter(orders_count__gte=5).order_by("pk").first()
    order = Order.objects.order_by("pk").first()
    pages = {
        "customers list": "/admin/customers/customer/",
        "customers list, page 5000": "/admin/customers/customer/?p=5000",
        "customers search by email": f"/admin/customers/customer/?q={customer.email}",
        "customers filter consent + country": f"/admin/customers/customer/?marketing_consent__exact=1&country={customer.country}",
        "customers filter suppressed": "/admin/customers/customer/?suppressed=yes",
        "customer page (timeline)": f"/admin/customers/customer/{customer.pk}/change/",
        "orders list": "/admin/customers/order/",
        "order page (lines inline)": f"/admin/customers/order/{order.pk}/change/",
        "products list (units, revenue)": "/admin/customers/product/",
    }
    print(f"database: {connection.settings_dict['NAME']}, customers ~{Customer.objects.order_by().count():,}")
    print(f"load average: {os.getloadavg()[0]:.2f}")
    for name, url in pages.items():
        times = []
        for _ in range(5):
            reset_queries()
            with CaptureQueriesContext(connection) as queries:
                start = time.perf_counter()
                response = client.get(url)
                times.append(time.perf_counter() - start)
            assert response.status_code == 200, (url, response.status_code)
        print(f"{name:40s} {statistics.median(times) * 1000:8.0f} ms  {len(queries):3d} queries")
    print(f"load average: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
