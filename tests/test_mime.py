"""The campaign email's faster serialiser writes the same bytes as the stock one (but the boundary)."""

import email
import re
import smtplib
from email.charset import Charset
from email.policy import compat32
from email.utils import formatdate

import pytest
from django.core.mail import BadHeaderError, EmailMultiAlternatives
from django.core.mail.message import sanitize_address
from hypothesis import example, given
from hypothesis import strategies as st

from campaigns.sending import backend, mime
from campaigns.sending.mime import POLICY, CampaignEmail

HEADER_NAMES = st.sampled_from(["Subject", "X-Xsell-Message", "List-Unsubscribe-Post", "Message-ID", "To"])
ASCII_VALUES = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.just("\t"))


@given(name=HEADER_NAMES, value=ASCII_VALUES, crlf=st.booleans())
@example(name="Subject", value="x" * 69, crlf=True)  # exactly 78 characters with "Subject: "
@example(name="Subject", value="x" * 70, crlf=True)  # one over
@example(name="Subject", value="a " * 35 + "b", crlf=False)
def test_a_header_is_folded_as_the_stock_policy_folds_it(name, value, crlf):
    linesep = "\r\n" if crlf else "\n"
    ours, stock = POLICY.clone(linesep=linesep), compat32.clone(linesep=linesep)
    assert ours.fold_binary(name, value) == stock.fold_binary(name, value)


WORDS = st.lists(
    st.tuples(
        st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1),
        st.sampled_from(["", "", ",", ";"]),  # the fold prefers to break after these
    ).map("".join),
    min_size=1,
    max_size=40,
).map(" ".join)


@given(name=HEADER_NAMES, value=WORDS, crlf=st.booleans(), data=st.data())
@example(
    name="List-Unsubscribe",
    value="<https://shop.example/t/one-click/5wuYyXLgaD_f0aPCiCeZ1g.abcdefghijklmnop/>, "
    "<mailto:unsubscribe@shop.example?subject=unsubscribe%205wuYyXLgaD_f0aPCiCeZ1g>",
    crlf=True,
    data=None,
)
def test_a_long_plain_header_is_folded_as_the_stock_policy_folds_it(name, value, crlf, data):
    # Long plain values are folded where compat32 folds their skeleton (kept per skeleton): check a value
    # and then another with the same skeleton (other characters, the same spaces, ";" and ","), which
    # reuses the first one's plan, as every email of a campaign reuses the first email's.
    linesep = "\r\n" if crlf else "\n"
    ours, stock = POLICY.clone(linesep=linesep), compat32.clone(linesep=linesep)
    other = "".join(c if c in " ;," else "y" for c in value)
    if data is not None:
        letters = st.characters(min_codepoint=0x21, max_codepoint=0x7E).filter(lambda c: c not in ";,")
        other = "".join(c if c in " ;," else data.draw(letters) for c in value)
    for v in (value, other):
        assert ours.fold_binary(name, v) == stock.fold_binary(name, v)


@given(value=st.text(max_size=200))
def test_any_text_header_is_folded_as_the_stock_policy_folds_it(value):
    value = value.replace("\r", "").replace("\n", "")
    assert POLICY.fold("Subject", value) == compat32.fold("Subject", value)


def _pair(**overrides):
    fields = {
        "subject": "Zoë, these go with your order: a case, a charger and a screen protector for it",
        "body": "Hello Zoë\n\nOur picks:\n- Leather case (£29.00)\n" + "long line " * 120 + "\n",
        "from_email": "Shöp Offers <offers@shop.example>",
        "to": ["zoe@example.com"],
        "headers": {
            "Message-ID": "<abc@shop.example>",
            "List-Unsubscribe": "<https://shop.example/t/u/abc.def>, "
            "<mailto:unsubscribe@shop.example?subject=unsubscribe%20abc>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            "X-Xsell-Campaign": "12",
            "Date": "Sat, 28 Nov 2026 19:00:00 -0000",
        },
    }
    fields.update(overrides)
    html = "<p>Hello <b>Zoë</b></p>" + '<a href="https://shop.example/p/1">x</a>' * 60
    emails = EmailMultiAlternatives(**fields), CampaignEmail(**fields)
    for e in emails:
        e.attach_alternative(html, "text/html")
    return emails


def _masked(message) -> bytes:
    data = message.as_bytes(linesep="\r\n")
    boundary = message.get_boundary().encode()
    return data.replace(boundary, b"BOUNDARY")


def test_a_whole_email_has_the_stock_bytes_but_for_its_boundary():
    stock, ours = (e.message() for e in _pair())
    assert _masked(ours) == _masked(stock)
    parsed = email.message_from_bytes(ours.as_bytes(linesep="\r\n"), policy=email.policy.default)
    assert str(parsed["Subject"]).strip().startswith("Zoë, these go with your order")
    assert parsed.get_body(("plain",)).get_content().startswith("Hello Zoë")
    assert "<b>Zoë</b>" in parsed.get_body(("html",)).get_content()


def test_a_single_part_email_is_unchanged():
    stock = EmailMultiAlternatives(subject="Hi", body="Plain", to=["a@example.com"], headers={"Date": "x"})
    ours = CampaignEmail(subject="Hi", body="Plain", to=["a@example.com"], headers={"Date": "x"})
    stock_bytes, ours_bytes = (e.message().as_bytes() for e in (stock, ours))
    mask = re.compile(rb"Message-ID: <[^>]+>")
    assert mask.sub(b"", ours_bytes) == mask.sub(b"", stock_bytes)


def test_a_boundary_found_in_the_text_is_drawn_again(monkeypatch):
    draws = iter([b"inthebody", b"fresh"])
    monkeypatch.setattr(mime, "random_bytes", lambda n: next(draws))
    _, ours = _pair(body=f"text with =_{b'inthebody'.hex()} inside")
    assert ours.message().get_boundary() == f"=_{b'fresh'.hex()}"


# ---------------------------------------------------------------------------------- wire bytes (SMTP)

LINE = st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n"))
TEXTS = st.lists(LINE | st.sampled_from(["\n", "\r\n", "\r"])).map("".join)
SUBJECTS = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n"), max_size=120
)


def _stock_masked(data: bytes) -> bytes:
    """Bytes with the boundary (ours: =_ and 32 hex digits; the stock one: =====…==) and Date masked."""
    data = re.sub(rb'boundary="([^"]+)"', b'boundary="B"', data)
    for boundary in set(re.findall(rb"^--(=_[0-9a-f]{32}|=+\d+==)(?:--)?\r$", data, re.M)):
        data = data.replace(b"--" + boundary, b"--B")
    return re.sub(rb"\r\nDate: [^\r]*\r\n", b"\r\nDate: D\r\n", data)


@given(
    subject=SUBJECTS,
    body=TEXTS,
    html=TEXTS,
    name=st.sampled_from(["", "Zoë Smith", "Ann (work)", "O'Brien, Pat"]),
    dated=st.booleans(),
)
@example(subject="x" * 78, body="Hello\n", html="<p>é</p>\r\n", name="", dated=True)
@example(subject="x" * 79, body="a" * 998 + "\n", html="b" * 250, name="Zoë", dated=False)
@example(subject="Ann, these go", body="", html="<p>only html</p>", name="", dated=True)
def test_wire_bytes_are_the_stock_bytes_but_for_boundary_and_date(subject, body, html, name, dated):
    headers = {"Message-ID": "<abc@shop.example>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
    headers["List-Unsubscribe"] = "<https://shop.example/t/u/abc.def/>, <mailto:unsubscribe@shop.example?x=1>"
    if dated:
        headers["Date"] = "Sat, 28 Nov 2026 19:00:00 -0000"
    stock = EmailMultiAlternatives(
        subject=subject,
        body=body,
        from_email=f"{name} <offers@shop.example>" if name else "offers@shop.example",
        to=["zoe@example.com", f"{name} <zoe2@example.com>" if name else "z@example.com"],
        headers=headers,
    )
    ours = CampaignEmail(
        subject=subject, body=body, from_email=stock.from_email, to=list(stock.to), headers=dict(headers)
    )
    for e in (stock, ours):
        e.attach_alternative(html, "text/html")
    wire = ours.wire_bytes()
    long_lines = any(len(line.encode()) > 998 for text in (body, html) for line in text.splitlines())
    assert (wire is None) == long_lines  # only a line SMTP cannot take as it is leaves the fast path
    if wire is not None:
        assert _stock_masked(wire) == _stock_masked(stock.message().as_bytes(linesep="\r\n"))


SEPARATORS = ["\n", "\r\n", "\r", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029"]


@given(
    runs=st.lists(
        st.tuples(st.sampled_from(["a", "é", "€", "😀", "<p>x</p>"]), st.integers(0, 1100))
        | st.sampled_from(SEPARATORS).map(lambda sep: (sep, 1)),
        max_size=8,
    )
)
@example(runs=[("a", 998)])
@example(runs=[("a", 999)])
@example(runs=[("a", 600), ("\u2028", 1), ("a", 600)])  # a long line of bytes, two short lines of text
@example(runs=[("é", 499)])
def test_an_email_leaves_the_wire_path_exactly_when_django_finds_a_long_line(runs):
    text = "".join(piece * n for piece, n in runs)
    django = any(len(line.encode(errors="surrogateescape")) > 998 for line in text.splitlines())
    assert (_campaign_email(body=text or "x").wire_bytes() is None) == django
    html = _campaign_email()
    html.alternatives[0] = type(html.alternatives[0])(text or "<p>x</p>", "text/html")
    assert (html.wire_bytes() is None) == django


@given(t=st.floats(min_value=0, max_value=4e9), localtime=st.booleans())
def test_the_date_of_a_second_is_formatdate_of_that_second(t, localtime):
    # formatdate() of a moment rounds to the microsecond first: half a microsecond before a second it
    # writes that second, the Date header the second before (both are the time of sending).
    assert mime._date(int(t), localtime) == formatdate(int(t), localtime=localtime)
    assert formatdate(t, localtime=localtime) in (
        mime._date(int(t), localtime),
        mime._date(int(t) + 1, localtime),
    )


def _campaign_email(**overrides) -> CampaignEmail:
    fields = {"subject": "Hi", "body": "Hello Zoë\n", "to": ["zoe@example.com"], **overrides}
    message = CampaignEmail(**fields)
    message.attach_alternative("<p>Hello <b>Zoë</b></p>\n" * 50, "text/html")
    return message


def test_a_campaign_email_takes_the_wire_path_and_other_emails_do_not():
    assert _campaign_email().wire_bytes() is not None
    attached = _campaign_email()
    attached.attach("offers.txt", "a list", "text/plain")
    latin = _campaign_email()
    latin.encoding = "iso-8859-1"
    long_line = _campaign_email(body="word " * 200)
    typed = _campaign_email(headers={"Content-Type": "text/plain"})  # set_boundary() would rewrite it
    charset = _campaign_email()
    charset.encoding = Charset("utf-8")  # base64 bodies in Django, not 8bit
    emails = (attached, latin, long_line, typed, charset)
    assert [e.wire_bytes() for e in emails] == [None] * len(emails)


def test_a_header_with_a_line_break_is_refused_on_the_wire_path_too():
    with pytest.raises(BadHeaderError):
        _campaign_email(subject="Hi\nBcc: everyone@example.com").wire_bytes()


ADDRESS_LIKE = st.from_regex(r"[A-Za-z0-9=?_.+-]{1,12}@[A-Za-z0-9.-]{1,20}", fullmatch=True)


@given(address=st.from_regex(backend._BARE, fullmatch=True) | ADDRESS_LIKE)
@example(address="a@" + "b" * 63 + ".example")
@example(address="a@" + "b" * 64 + ".example")  # a label longer than 63: refused
@example(address="=?utf-8?q?abc?=@example.com")  # an encoded word: the parser decodes it
@example(address="=?us-ascii?q?a_b?=@example.com")
@example(address="a..b@example.com")
@example(address="Zoë <zoe@example.com>")
def test_an_address_goes_to_smtp_as_sanitize_address_makes_it_or_is_refused_alike(address):
    try:
        expected = sanitize_address(address, "utf-8")
    except ValueError:
        with pytest.raises(ValueError):
            backend.smtp_address(address, "utf-8")
    else:
        assert backend.smtp_address(address, "utf-8") == expected


@given(address=st.from_regex(backend._BARE, fullmatch=True) | ADDRESS_LIKE)
@example(address="=?utf-8?q?abc?=@example.com")
@example(address="Zoë <zoe@example.com>")
@example(address="<already@example.com>")
@example(address="not an address")
def test_the_envelope_carries_an_address_as_smtplib_quotes_it(address):
    assert backend.envelope_quoted(address) == smtplib.quoteaddr(address)


STDLIB_ENVELOPE_DIGESTS = {"mail": "9152620538ba6a4a", "rcpt": "ea6dbc277052af5b"}


def test_the_envelope_commands_are_the_stdlib_ones_they_were_copied_from():
    # backend._QuickEnvelope copies smtplib.SMTP.mail and rcpt of Python 3.11.7: a Python whose
    # versions differ fails here, to have the copy checked against them.
    import hashlib
    import inspect

    digests = {
        name: hashlib.sha256(inspect.getsource(getattr(smtplib.SMTP, name)).encode()).hexdigest()[:16]
        for name in ("mail", "rcpt")
    }
    assert digests == STDLIB_ENVELOPE_DIGESTS


def test_an_email_without_recipients_is_not_sent_whatever_else_is_wrong_with_it():
    assert backend.EmailBackend()._send(_campaign_email(to=[], subject="Hi\nBcc: x@example.com")) is False
