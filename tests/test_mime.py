"""The campaign email's faster serialiser writes the same bytes as the stock one (but the boundary)."""

import email
import re
from email.policy import compat32

from django.core.mail import EmailMultiAlternatives
from hypothesis import example, given
from hypothesis import strategies as st

from campaigns.sending import mime
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
