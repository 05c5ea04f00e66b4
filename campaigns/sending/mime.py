"""The email object a campaign sends: Django's EmailMultiAlternatives, serialised with less work.

At hundreds of emails a second, turning an email into bytes is a large part of sending it: the
stdlib's compat32 serialiser folds every header through email.header.Header (17 headers an email), and
for a multipart message without a boundary it compiles a new regular expression to choose one. So:

- a header that already is one short line of plain ASCII is written as it is, which is what Header
  makes of it, and a longer one of plain ASCII words is folded where compat32 folds its skeleton (the
  plan found once per skeleton: every email of a campaign has the same List-Unsubscribe skeleton); tests
  compare both with the stock fold on generated values; any other header is folded as before;
- the boundary is chosen when the message is built: 128 random bits, checked against the parts' text,
  from the pooled random bytes (models.random_bytes) instead of a system call per email, which released
  the GIL and left the courier's thread waiting to get it back from the composing one.

In message() everything else (Django's header-injection checks, address and subject encoding, the
parts' charset and transfer encoding) is Django's and the stdlib's, unchanged.

Over SMTP (campaigns.sending.backend) the MIME tree is not built at all for the email a campaign sends,
a text and an HTML part in UTF-8 with lines SMTP takes as they are: wire_bytes() writes the bytes
message().as_bytes() would, each header through Django's checks and the same policy's fold (tests
compare the two on generated emails). Building and serialising the tree took more CPU per email than
rendering it. Any other email takes the stock path.
"""

from __future__ import annotations

import functools
import re
import time
from email.policy import Compat32
from email.utils import formatdate, make_msgid

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.core.mail.message import DNS_NAME, RFC5322_EMAIL_LINE_LENGTH_LIMIT, forbid_multi_line_headers

from ..models import random_bytes

# Printable ASCII words separated by single spaces: no folding, encoding or whitespace rules apply.
_PLAIN = re.compile(r"[\x21-\x7e]+(?: [\x21-\x7e]+)*\Z")


def _one_plain_line(name: str, value: str, max_line_length: int = 78) -> bool:
    """The header is written as "name: value" on one line by compat32 (and Django's checks leave the
    value as it is): printable ASCII words that fit the line."""
    return len(name) + 2 + len(value) <= max_line_length and _PLAIN.match(value) is not None


# Every character but those the fold looks at (it splits at spaces, preferring after ";" and ","): two
# values with the same skeleton are folded at the same places.
_SKELETON = str.maketrans({chr(c): "x" for c in range(0x21, 0x7F) if chr(c) not in ";,"})


class _Policy(Compat32):
    def _fold(self, name, value, sanitize):
        if isinstance(value, str) and _one_plain_line(name, value, self.max_line_length or 78):
            return f"{name}: {value}{self.linesep}"
        if isinstance(value, str) and _PLAIN.match(value):
            # A long plain header (List-Unsubscribe: two URLs with the message's token) is folded at
            # the places compat32 folds its skeleton, found once per campaign instead of per email.
            # Keyed by what the fold depends on, not by the policy: as_bytes() clones it for every email.
            plan = _fold_plan(self.linesep, self.max_line_length, name, value.translate(_SKELETON))
            if plan is not None:
                return "".join(piece if type(piece) is str else value[piece[0] : piece[1]] for piece in plan)
        return super()._fold(name, value, sanitize)


@functools.lru_cache(maxsize=256)
def _fold_plan(linesep: str, max_line_length: int | None, name: str, skeleton: str) -> tuple | None:
    """compat32's fold of the skeleton as inserted strings and (start, end) ranges of the value; None if
    the fold did more than insert line breaks and spaces (then the value is folded as usual)."""
    policy = Compat32(linesep=linesep, max_line_length=max_line_length)
    folded, plan, i, start = policy.fold(name, skeleton), [], 0, 0
    head = f"{name}: "
    if not folded.startswith(head):
        return None
    k = len(head)
    plan.append(head)
    while k < len(folded):
        if i < len(skeleton) and folded[k] == skeleton[i]:
            i, k = i + 1, k + 1
            continue
        if i > start:
            plan.append((start, i))
        at_fold_point = i in (0, len(skeleton)) or skeleton[i] == " "  # before a space, or at an end
        if at_fold_point and folded.startswith(linesep, k):
            plan.append(linesep)
            k += len(linesep)
        elif i == 0 and folded[k] == " " and plan[-1] == linesep:
            plan.append(" ")  # the first word moved below the header name gets a space before it
            k += 1
        else:
            return None
        start = i
    if i != len(skeleton):
        return None
    if i > start:
        plan.append((start, i))
    return tuple(plan)


POLICY = _Policy()
WIRE_POLICY = POLICY.clone(linesep="\r\n")
_NEWLINE = re.compile(r"\r\n|\r|\n")  # every line break the stdlib's generator writes as linesep


class CampaignEmail(EmailMultiAlternatives):
    def message(self):
        msg = super().message()
        msg.policy = POLICY  # the serialiser takes the top message's policy for every part
        if msg.is_multipart():
            msg.set_boundary(self._boundary())
        return msg

    def _boundary(self) -> str:
        texts = [self.body, *(a[0] for a in self.alternatives)]
        texts += [a[1] for a in self.attachments if isinstance(a, tuple)]  # not a MIMEBase one
        while True:
            boundary = f"=_{random_bytes(16).hex()}"
            if not any(isinstance(t, str) and boundary in t for t in texts):
                return boundary

    def wire_bytes(self) -> bytes | None:
        """What message().as_bytes(linesep="\r\n") returns, written directly, for an email of the shape
        campaigns send; None for any other. The steps mirror EmailMessage.message() (Django 5.2) and the
        stdlib's BytesGenerator: the headers in the same order, the parts as SafeMIMEText makes them."""
        encoding = self.encoding or settings.DEFAULT_CHARSET
        names = {key.lower() for key in self.extra_headers}
        parts = [("plain", self.body)] if self.body else []  # Django leaves out an empty text part
        parts += [(a[1].partition("/")[2], a[0]) for a in self.alternatives]
        if (
            not (type(encoding) is str and encoding == "utf-8")  # Django's 8-bit UTF-8 charset: this spelling
            or "content-type" in names  # set_boundary() rewrites it
            or self.attachments
            or self.content_subtype != "plain"
            or self.alternative_subtype != "alternative"
            or [a[1] for a in self.alternatives] != ["text/html"]
            or not all(isinstance(text, str) for _, text in parts)
        ):
            return None  # attachments or another charset
        bodies = []
        for subtype, text in parts:
            try:
                body = (
                    text.replace("\n", "\r\n") if "\r" not in text else _NEWLINE.sub("\r\n", text)
                ).encode()
            except UnicodeEncodeError:
                return None  # not UTF-8 text: whatever Django makes of it
            # Each line of the body holds one or more of the text's lines (str.splitlines() splits at more
            # characters): when none is too long, none of the text's is, and Django's own test is skipped.
            if max(map(len, body.split(b"\r\n"))) > RFC5322_EMAIL_LINE_LENGTH_LIMIT and _long_lines(text):
                return None  # a line SMTP needs quoted-printable for
            bodies.append((subtype, "7bit" if text.isascii() else "8bit", body))
        boundary = self._boundary()
        headers = [
            ("MIME-Version", "1.0"),
            ("Subject", self.subject),
            ("From", self.extra_headers.get("From", self.from_email)),
        ]
        for name, values in (("To", self.to), ("Cc", self.cc), ("Reply-To", self.reply_to)):
            if name in self.extra_headers:
                headers.append((name, self.extra_headers[name]))
            elif values:
                headers.append((name, ", ".join(str(v) for v in values)))
        if "date" not in names:
            headers.append(("Date", _date(int(time.time()), settings.EMAIL_USE_LOCALTIME)))
        if "message-id" not in names:
            headers.append(("Message-ID", make_msgid(domain=DNS_NAME)))
        headers += [
            (name, value)
            for name, value in self.extra_headers.items()
            if name.lower() not in {"from", "to", "cc", "reply-to"}
        ]
        # The boundary is always "=_" and 32 hex digits: compat32 folds this header at the same place.
        out = [f'Content-Type: multipart/alternative;\r\n boundary="{boundary}"\r\n'.encode()]
        out += [_header_line(name, str(value), encoding) for name, value in headers]
        out.append(b"\r\n")
        for i, (subtype, transfer, body) in enumerate(bodies):
            out.append(f"--{boundary}\r\n".encode() if i == 0 else f"\r\n--{boundary}\r\n".encode())
            out.append(
                f'Content-Type: text/{subtype}; charset="utf-8"\r\nMIME-Version: 1.0\r\n'
                f"Content-Transfer-Encoding: {transfer}\r\n\r\n".encode()
            )
            out.append(body)
        out.append(f"\r\n--{boundary}--\r\n".encode())
        return b"".join(out)


def _header_line(name: str, value: str, encoding: str) -> bytes:
    """_header(name, value, encoding), without its steps for a short line of printable ASCII words:
    Django's checks leave such a value as it is (no line break, nothing to encode; Subject's Header
    encodes it to itself) and compat32 writes it on one line. Half of an email's headers are new in
    every email (To, Date, Message-ID, X-Xsell-Message): a cache does not save their steps."""
    if _one_plain_line(name, value):
        return f"{name}: {value}\r\n".encode()
    return _header(name, value, encoding)


@functools.lru_cache(maxsize=4)
def _date(second: int, localtime: bool) -> str:
    # formatdate() of the current time writes whole seconds: the emails of one second share the text.
    return formatdate(second, localtime=localtime)


# From, MIME-Version, List-Unsubscribe-Post, X-Xsell-Campaign and often Subject repeat in every email
# of a campaign; the per-message ones (To, Date, Message-ID, List-Unsubscribe) only pass through.
@functools.lru_cache(maxsize=512)
def _header(name: str, value: str, encoding: str) -> bytes:
    """One header as SafeMIMEMultipart stores it (Django's checks and encoding) and as_bytes() writes it."""
    if name.lower() == "subject" and len(value) <= 78 and _PLAIN.match(value):
        return WIRE_POLICY.fold_binary(name, value)  # what Header(value).encode() leaves unchanged
    return WIRE_POLICY.fold_binary(*forbid_multi_line_headers(name, value, encoding))


def _long_lines(text: str) -> bool:
    """Django's test for choosing quoted-printable over 8bit (SafeMIMEText.set_payload): a line longer
    than the limit in UTF-8."""
    return any(
        len(line.encode(errors="surrogateescape")) > RFC5322_EMAIL_LINE_LENGTH_LIMIT
        for line in text.splitlines()
    )
