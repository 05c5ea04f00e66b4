"""Marketer templates: sandboxed, strict, escaped, bounded; refused on save with a clear message."""

import pytest

from campaigns.admin.campaigns import EmailTemplateForm
from campaigns.rendering import RenderError, email_render, links_rewrite, sample_context

pytestmark = pytest.mark.django_db  # the admin form checks the name is unique

ATTACKS = {
    "mro": "{{ ''.__class__.__mro__ }}",
    "attr filter": "{{ customer|attr('__class__') }}",
    "format_map": "{{ '{0.__class__.__mro__}'.format_map(customer) }}",
    "format": "{{ '{0.__init__.__globals__}'.format(customer) }}",
    "power": "{{ ((9**99)**99)**99 }}",
    "huge range": "{% for i in range(10**8) %}x{% endfor %}",
    "nested ranges": "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}",
    "repeat": "{{ 'a' * 100000000 }}",
    "repeat a repeat": "{{ ('a' * 9999) * 9999 }}",
    "output": "{% for i in range(9999) %}{{ 'a' * 9999 }}{% endfor %}",
    "join a repeat": "{{ (['a' * 9999] * 9999)|join }}",
    "center": "{{ 'a'|center(10**8) }}",
    "undefined": "{{ no_such_variable }}",
    "syntax": "{% if %}",
    "mutation": "{% set x = offers.append(1) %}",
    # Values that outgrow memory before they are output: refused by the render's memory cap.
    "concatenated with itself": "{% set x = 'a' * 9999 %}" + "{% set x = x ~ x %}" * 15 + "{{ x|length }}",
    "doubled in a loop": (
        "{% set ns = namespace(x='a' * 9999) %}{% for i in range(15) %}{% set ns.x = ns.x + ns.x %}"
        "{% endfor %}{{ ns.x|length }}"
    ),
    "padded": "{{ 'x'.ljust(10**9)|length }}",
    "format width": "{{ '%1000000000s'|format('x')|length }}",
    "batch filled": "{{ ['x']|batch(10**9, 'y')|list|length }}",
}


@pytest.mark.parametrize("source", ATTACKS.values(), ids=ATTACKS.keys())
def test_attacks_fail_that_render_only(source):
    with pytest.raises(RenderError, match=r"^HTML"):
        email_render(subject="s", html=source, text="t", context=sample_context())
    # The process is fine: the next render works.
    assert (
        "Ada"
        in email_render(
            subject="Hi", html="{{ customer.first_name }}", text="t", context=sample_context()
        ).html
    )


@pytest.mark.parametrize("source", ATTACKS.values(), ids=ATTACKS.keys())
def test_admin_form_refuses_them_on_save(source):
    form = EmailTemplateForm(
        data={"name": "x", "layout": "email/base.html", "subject": "s", "html": source, "text": "t"}
    )
    assert not form.is_valid()
    assert "does not render" in str(form.errors)


def test_a_good_template_saves():
    form = EmailTemplateForm(
        data={
            "name": "ok",
            "layout": "email/base.html",
            "subject": "Hi {{ customer.first_name }}",
            "html": "{% for o in offers %}<a href='{{ o.url }}'>{{ o.name }}</a>{% endfor %}",
            "text": "t",
        }
    )
    assert form.is_valid(), form.errors


def test_html_is_escaped_text_is_not_and_css_is_inlined():
    ctx = sample_context()
    ctx["customer"]["first_name"] = "<script>alert(1)</script>"
    out = email_render(
        subject="{{ customer.first_name }}",
        html="<p class='x'>{{ customer.first_name }}</p>",
        text="{{ customer.first_name }}",
        context=ctx,
    )
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out.html and "<script>alert" not in out.html
    assert "<script>alert(1)</script>" in out.text
    assert 'style="' in out.html  # the layout's <style> was inlined for mail clients


def test_error_names_the_part_and_line():
    with pytest.raises(RenderError, match=r"^text, line 2: .*UndefinedError"):
        email_render(subject="s", html="h", text="ok\n{{ nope }}", context=sample_context())
    with pytest.raises(RenderError, match="subject: renders to an empty line"):
        email_render(subject="{{ '' }}", html="h", text="t", context=sample_context())


def test_links_are_rewritten_but_only_absolute_http_links():
    seen = []
    html = links_rewrite(
        html='<a href="https://shop.example/a?x=1&amp;y=2">a</a> <a href="mailto:x@y">m</a> <a href="#top">t</a>',
        track=lambda url: seen.append(url) or "https://t.example/c/1",
    )
    assert seen == ["https://shop.example/a?x=1&y=2"]
    assert 'href="mailto:x@y"' in html and 'href="#top"' in html and 'href="https://t.example/c/1"' in html


@pytest.mark.parametrize(
    "footer",
    [
        {},
        {"unsubscribe_url": "https://shop.example/u?a=1&b=<2>"},
        {
            "unsubscribe_url": "https://shop.example/u/\"x'",
            "preferences_url": "https://shop.example/p?x=&amp;",
            "pixel_url": "https://shop.example/o.gif",
            "honeypot_url": "https://shop.example/h",
        },
    ],
)
def test_layouts_filled_once_per_process_equal_a_full_render(footer):
    from markupsafe import Markup

    from campaigns.rendering import LAYOUT_ENV, layout_fill

    body = Markup('<p class="offer">Tea &amp; <b>cake</b></p>')
    html = layout_fill("email/base.html", body=body, subject='A & B <"c">', **footer)
    assert html == LAYOUT_ENV.get_template("email/base.html").render(
        body=body, subject='A & B <"c">', **footer
    )
    assert "A &amp; B &lt;&#34;c&#34;&gt;" in html and "<b>cake</b>" in html
    text = layout_fill("email/base.txt", body="Tea & <cake>", **footer)
    assert text == LAYOUT_ENV.get_template("email/base.txt").render(body="Tea & <cake>", **footer)
    assert "Tea & <cake>" in text


def test_attribute_lookup_on_plain_dicts_is_the_stock_sandboxes():
    # rendering's sandbox looks a plain dict's key up without trying getattr() first: for every name,
    # what a template gets must be what the stock sandbox gives (values, and undefined for the rest).
    from jinja2 import StrictUndefined, Undefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from campaigns.rendering import HTML_ENV

    stock = ImmutableSandboxedEnvironment(undefined=StrictUndefined)
    data = {"name": "Case", "items": "a key named like a method", "__class__": "x", "price": None, 3: "int"}
    names = [*dir(dict), "name", "items", "price", "missing", "__dict__", "__mro__", "mro", "__globals__"]
    for obj in (data, {}, sample_context()["customer"], ["a"], "text"):
        for name in names:
            ours, theirs = HTML_ENV.getattr(obj, name), stock.getattr(obj, name)
            if isinstance(theirs, Undefined):
                assert type(ours) is type(theirs) and ours._undefined_hint == theirs._undefined_hint, name
            else:
                assert ours == theirs, name
    html = email_render(subject="s", html="{{ d.items }} {{ d.name }}", text="t", context={"d": data}).html
    assert "a key named like a method" not in html  # getattr first, as in the stock sandbox: the method
    assert "Case" in html


def test_the_render_alarm_stops_a_stuck_render_inside_a_session_and_restores_the_handler():
    import signal
    import time

    from campaigns.rendering import _alarm, render_session

    def theirs(signum, frame):
        pass

    previous = signal.signal(signal.SIGALRM, theirs)
    try:
        with render_session():
            assert signal.getsignal(signal.SIGALRM) is not theirs  # ours, installed once for the chunk
            for _ in range(2):  # each render of the session has its own deadline
                started = time.monotonic()
                with pytest.raises(TimeoutError), _alarm(0.05):
                    time.sleep(2)  # stuck inside one expression
                assert time.monotonic() - started < 1
            time.sleep(3 * _alarm.TICK_SECONDS)  # between renders the session's ticks stop nothing
            email_render(subject="Hi", html="<p>x</p>", text="t", context=sample_context())
            assert signal.getsignal(signal.SIGALRM) is not theirs
        assert signal.getsignal(signal.SIGALRM) is theirs  # restored after the session
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)  # and its timer stopped
        email_render(subject="Hi", html="<p>x</p>", text="t", context=sample_context())
        assert signal.getsignal(signal.SIGALRM) is theirs  # and after a render on its own
    finally:
        signal.signal(signal.SIGALRM, previous)


def test_the_render_alarm_never_stays_armed_or_stale_when_its_steps_are_interrupted(monkeypatch):
    """Another signal's handler can raise between any two steps of entering or leaving the alarm: the
    timer must not be left running under the default handler (SIGALRM would kill the worker), and
    later renders must keep their bound."""
    import signal
    import time

    from campaigns import rendering
    from campaigns.rendering import _alarm, render_session

    real = signal.setitimer
    calls = []

    def interrupted_after_arming(which, seconds, interval=0.0):
        real(which, seconds, interval)
        calls.append(seconds)
        if seconds and len(calls) == 1:
            raise KeyboardInterrupt  # as if another handler ran just after the timer was armed

    monkeypatch.setattr(rendering.signal, "setitimer", interrupted_after_arming)
    previous = signal.getsignal(signal.SIGALRM)
    with pytest.raises(KeyboardInterrupt), render_session():
        pass
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert signal.getsignal(signal.SIGALRM) is previous and not _alarm.ticking and not _alarm.installed

    def interrupted_disarming(which, seconds, interval=0.0):
        real(which, seconds, interval)
        if not seconds:
            raise KeyboardInterrupt

    monkeypatch.setattr(rendering.signal, "setitimer", interrupted_disarming)
    with pytest.raises(KeyboardInterrupt), render_session():
        pass
    assert not _alarm.ticking and not _alarm.installed and _alarm.deadline is None
    monkeypatch.setattr(rendering.signal, "setitimer", real)
    started = time.monotonic()
    with pytest.raises(TimeoutError), _alarm(0.05):
        time.sleep(2)  # the bound still holds after both
    assert time.monotonic() - started < 1


def test_a_render_that_outgrows_memory_fails_alone_and_the_cap_is_lifted_after_it():
    import resource
    import threading

    from campaigns.rendering import _memory_cap, render_session

    before = resource.getrlimit(resource.RLIMIT_DATA)
    bomb = "{% set x = 'a' * 9999 %}" + "{% set x = x ~ x %}" * 15 + "{{ x|length }}"
    with render_session():
        capped = resource.getrlimit(resource.RLIMIT_DATA)
        assert capped[0] != resource.RLIM_INFINITY and capped != before
        with pytest.raises(RenderError, match=r"^HTML: needs more than 256 MB of memory"):
            email_render(subject="s", html=bomb, text="t", context=sample_context())
        assert resource.getrlimit(resource.RLIMIT_DATA) == capped  # a render inside a session keeps it
        ok = email_render(subject="s", html="{{ customer.first_name }}", text="t", context=sample_context())
        assert "Ada" in ok.html
    assert resource.getrlimit(resource.RLIMIT_DATA) == before
    # Renders in two threads share the cap: it stays until the last one ends.
    entered, leave = threading.Event(), threading.Event()

    def other():
        with _memory_cap():
            entered.set()
            leave.wait(10)

    thread = threading.Thread(target=other)
    thread.start()
    entered.wait(10)
    shared = resource.getrlimit(resource.RLIMIT_DATA)
    with _memory_cap():
        assert resource.getrlimit(resource.RLIMIT_DATA) == shared != before
    assert resource.getrlimit(resource.RLIMIT_DATA) == shared
    leave.set()
    thread.join()
    assert resource.getrlimit(resource.RLIMIT_DATA) == before


def test_money_shows_the_same_text_from_its_cache():
    from decimal import Decimal

    from campaigns.rendering import money

    for _ in range(2):  # the second time from the cache
        assert money(Decimal("29"), "GBP") == "£29.00"
        assert money(-0.0, "EUR") == "€-0.00"
        assert money(0.0, "EUR") == "€0.00"
        assert money(1234.5, "SEK") == "1,234.50 SEK"
        assert money("n/a", "GBP") == "n/a"
        assert money(True, "") == "True"
        assert money(1, "") == "1.00"


@pytest.mark.django_db
def test_the_template_page_names_what_a_template_is_given(admin_client):
    from django.urls import reverse

    page = admin_client.get(reverse("admin:campaigns_emailtemplate_add")).content.decode()
    for name in (
        "customer.first_name",
        ".accept_url",
        "offer_page_url",
        "{% if order %}",
        "|money(offer.currency)",
    ):
        assert name in page, name


def test_the_template_page_previews_for_a_customer_in_a_form_of_its_own(admin_client, mailoutbox):
    from django.urls import reverse

    from .campaign_fixtures import shop

    world = shop(recipients=1)
    template, customer = world["template"], world["recipients"][0]
    change = reverse("admin:campaigns_emailtemplate_change", args=[template.pk])
    page = admin_client.get(change, {"customer": customer.external_id}).content.decode()
    # The change form's inputs would save the template: Preview's field and button belong to a form
    # outside it (an HTML form inside another is ignored by browsers).
    assert (
        'name="customer" form="xsell-preview"' in page and 'button type="submit" form="xsell-preview"' in page
    )
    assert page.index('<form id="xsell-preview" method="get"></form>') > page.index('id="emailtemplate_form"')
    assert "No customer" not in page and f"rendered for customer {customer.external_id}" in page
    by_id = admin_client.get(change, {"customer": str(customer.pk)}).content.decode()
    assert "No customer" not in by_id
    unknown = admin_client.get(change, {"customer": "nosuch"}).content.decode()
    assert "No customer nosuch: showing the sample customer." in unknown
    preview = admin_client.get(
        reverse("admin:campaigns_emailtemplate_preview", args=[template.pk]),
        {"customer": customer.external_id},
    )
    assert customer.first_name in preview.content.decode()
    # Send test renders for the customer shown, and comes back to the same preview.
    test = reverse("admin:campaigns_emailtemplate_test", args=[template.pk])
    response = admin_client.post(f"{test}?customer={customer.external_id}", {"to": "me@shop.example"})
    assert response.status_code == 302 and response["Location"].endswith(f"?customer={customer.external_id}")
    assert customer.first_name in mailoutbox[0].subject or customer.first_name in mailoutbox[0].body
