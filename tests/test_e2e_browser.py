"""End to end in headless Chromium: a marketer builds a campaign, a recipient accepts, the report shows it.

Needs Debian's chromium (`.ci/run` installs it) and Playwright for Python; skipped where either is missing.
Screenshots are kept in tests/artifacts/.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
from pathlib import Path

import pytest
from django.core import mail
from django.core.management import call_command
from django.db import connections
from django.db.models import F

from campaigns.models import Campaign, EmailTemplate, Event, Message
from customers.models import Customer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
playwright = pytest.importorskip("playwright.sync_api")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed"),
]

TEMPLATE_HTML = """<h1>Hi {{ customer.first_name }}</h1>
{% for offer in offers %}<p><a href="{{ offer.url }}">{{ offer.name }}</a> — {{ offer.reason }}
<a class="accept" href="{{ offer.accept_url }}">Add it</a></p>{% endfor %}"""


@pytest.fixture
def browser_page(monkeypatch):
    # Playwright's sync API keeps an event loop in this thread; the test's own ORM calls are still
    # plain synchronous code, so Django's async-context guard does not apply to them.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-quic",
            ],
        )
        # A person's browser: headless Chromium says "HeadlessChrome", which tracking takes for a scanner.
        agent = browser.new_page().evaluate("navigator.userAgent").replace("HeadlessChrome", "Chrome")
        page = browser.new_page(viewport={"width": 1280, "height": 1000}, user_agent=agent)
        # The shop's product pages live elsewhere: answer them here, nothing leaves the machine.
        page.route(
            re.compile(r"https://shop\.example/.*"),
            lambda route: route.fulfill(body="<h1>Shop</h1>", content_type="text/html"),
        )
        yield page
        # The test's ORM calls ran beside Playwright's event loop, where Django keeps a connection
        # apart from the one the test database's teardown closes: close it here, or it stays open.
        connections.close_all()
        browser.close()


@pytest.mark.django_db(transaction=True)
def test_marketer_to_recipient_to_report(live_server, settings, browser_page, django_user_model):
    settings.SITE_URL = live_server.url
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.TRACKING_SCANNER_SECONDS = 0  # the robot below accepts within a second of delivery
    ARTIFACTS.mkdir(exist_ok=True)
    call_command("generate_demo_data", "--customers", "300", "--seed", "3", verbosity=0)
    django_user_model.objects.create_superuser("marketer", "m@shop.example", "secret-pass-1")
    page = browser_page

    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", "marketer")
    page.fill("#id_password", "secret-pass-1")
    page.click("input[type=submit]")
    page.wait_for_url(f"{live_server.url}/admin/")

    page.goto(f"{live_server.url}/admin/campaigns/segment/add/")
    page.fill("#id_name", "Recent buyers")
    page.fill(
        "#id_rules",
        json.dumps({"op": "and", "rules": [{"field": "days_since_last_order", "op": "<=", "value": 60}]}),
    )
    page.click("input[name=_save]")
    page.wait_for_selector(".messagelist .success")

    page.goto(f"{live_server.url}/admin/campaigns/emailtemplate/add/")
    page.fill("#id_name", "Add-ons")
    page.fill("#id_subject", "{{ customer.first_name }}, these go with your order")
    page.fill("#id_html", TEMPLATE_HTML)
    page.fill("#id_text", "{% for offer in offers %}{{ offer.name }} {{ offer.url }}\n{% endfor %}")
    page.click("input[name=_continue]")
    page.wait_for_selector(".messagelist .success")
    preview = page.frame_locator("iframe[title='email preview']")
    assert "Hi" in preview.locator("h1").inner_text()
    page.screenshot(path=str(ARTIFACTS / "template-preview.png"), full_page=True)
    # Preview for a customer renders again and saves nothing, not even an edit in the form.
    customer = Customer.objects.exclude(first_name="").order_by("pk").first()
    page.fill("input[name=customer]", customer.external_id)
    page.fill("#id_subject", "edited, not saved")
    page.click("button[form=xsell-preview]")
    page.wait_for_url(re.compile(r".*\?customer="))
    assert not page.locator(".messagelist .success").count()
    assert EmailTemplate.objects.get(name="Add-ons").subject != "edited, not saved"
    assert customer.first_name in preview.locator("h1").inner_text()

    page.goto(f"{live_server.url}/admin/campaigns/campaign/add/")
    page.fill("#id_name", "After a purchase")
    page.select_option("#id_kind", "post_purchase")
    page.select_option("#id_segment", label="Recent buyers")
    page.select_option("#id_template", label="Add-ons")
    page.fill("#id_holdout_percent", "0")
    page.fill("#id_delay_hours", "0")
    page.fill("#id_trigger_lookback_days", "30")
    page.click("input[name=_save]")
    page.wait_for_selector(".messagelist .success")

    campaign = Campaign.objects.get(name="After a purchase")
    page.check(f"input.action-select[value='{campaign.pk}']")
    page.select_option("select[name=action]", "start")
    page.click("button[name=index]")
    page.wait_for_selector("text=Would be emailed")  # the dry run first: nothing planned yet
    assert not Message.objects.filter(campaign=campaign).exists()
    page.screenshot(path=str(ARTIFACTS / "campaign-start-dry-run.png"), full_page=True)
    page.click("input[value='Yes, start sending']")
    page.wait_for_selector(".messagelist")
    assert Message.objects.filter(campaign=campaign, status="sent").exists(), "the campaign sent nothing"

    # The recipient reads it minutes later: an answer seconds after delivery is a scanner's, not a person's.
    Message.objects.filter(campaign=campaign).update(sent_at=F("sent_at") - dt.timedelta(minutes=5))
    email = next(m for m in mail.outbox if "these go with your order" in m.subject)
    html = email.alternatives[0][0]
    accept_url = re.search(r'class="accept" href="([^"]+)"', html).group(1)
    assert accept_url.startswith(live_server.url)
    page.goto(accept_url)  # GET asks for confirmation, records nothing
    assert not Event.objects.filter(kind="accept").exists()
    page.locator("form button, form input[type=submit]").first.click()
    page.wait_for_url(re.compile(r"https://shop\.example/.*utm_campaign=.*"))
    assert Event.objects.filter(kind="accept", message__campaign=campaign).count() == 1

    page.goto(f"{live_server.url}/admin/campaigns/campaign/{campaign.pk}/report/?refresh=1")
    row = page.locator("tr", has_text="Accepted an offer").first
    assert row.locator("td.n").first.inner_text().strip() == "1"
    page.wait_for_function("() => window.Chart && Object.keys(Chart.instances).length >= 1")
    page.screenshot(path=str(ARTIFACTS / "campaign-report.png"), full_page=True)
