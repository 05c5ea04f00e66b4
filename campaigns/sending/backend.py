"""Django's SMTP backend, sending a campaign's email as CampaignEmail.wire_bytes() writes it.

Django's backend builds the MIME tree and serialises it, and parses both addresses with the stdlib's
header parser, for every email: about 0.6 ms of CPU an email, more than composing it. This backend
skips the three for the emails campaigns send, with the same bytes on the wire, and is Django's for
any other email (EMAIL_URL selects it: settings._email_from_url).
"""

from __future__ import annotations

import functools
import re
import smtplib
from typing import NamedTuple

from django.conf import settings
from django.core.mail.backends import smtp
from django.core.mail.message import sanitize_address

from .mime import CampaignEmail

# A bare address whose local part is a dot-atom (not an RFC 2047 encoded word, which the parser
# decodes) and whose domain is ASCII letters, digits and hyphens in labels of at most 63:
# sanitize_address returns it unchanged (a test compares the two).
_BARE = re.compile(
    r"(?!=\?)[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\Z"
)


def smtp_address(address, encoding: str) -> str:
    """sanitize_address(address, encoding), without parsing a bare ASCII address."""
    if type(address) is not str or type(encoding) is not str:
        return sanitize_address(address, encoding)  # a lazy string or a tuple: not a cache key
    if _BARE.match(address):
        return address
    return _sanitized(address, encoding)


@functools.lru_cache(maxsize=256)  # the sender's address is the same for every email of a campaign
def _sanitized(address: str, encoding: str) -> str:
    return sanitize_address(address, encoding)


def envelope_quoted(address: str) -> str:
    """smtplib.quoteaddr(address), the form MAIL FROM and RCPT TO carry, without parsing a bare address
    (quoteaddr parses every address it is given: about 11 microseconds, twice an email)."""
    if type(address) is str and _BARE.match(address):
        return f"<{address}>"  # what parseaddr finds in a bare address is the whole of it (a test checks)
    return smtplib.quoteaddr(address)


class _QuickEnvelope:
    """smtplib.SMTP's mail() and rcpt(), as in Python 3.11, with envelope_quoted() for quoteaddr(); and
    data_started, whether the current message got as far as DATA (each MAIL FROM starts one): a
    conversation that broke before it delivered nothing, so the message may be retried."""

    data_started = False

    def data(self, msg):
        self.data_started = True
        return super().data(msg)

    def mail(self, sender, options=()):
        self.data_started = False
        optionlist = ""
        if options and self.does_esmtp:
            if any(x.lower() == "smtputf8" for x in options):
                if not self.has_extn("smtputf8"):
                    raise smtplib.SMTPNotSupportedError("SMTPUTF8 not supported by server")
                self.command_encoding = "utf-8"
            optionlist = " " + " ".join(options)
        self.putcmd("mail", f"FROM:{envelope_quoted(sender)}{optionlist}")
        return self.getreply()

    def rcpt(self, recip, options=()):
        optionlist = " " + " ".join(options) if options and self.does_esmtp else ""
        self.putcmd("rcpt", f"TO:{envelope_quoted(recip)}{optionlist}")
        return self.getreply()


class _SMTP(_QuickEnvelope, smtplib.SMTP):
    pass


class _SMTPSSL(_QuickEnvelope, smtplib.SMTP_SSL):
    pass


class EmailBackend(smtp.EmailBackend):
    @property
    def connection_class(self):
        return _SMTPSSL if self.use_ssl else _SMTP

    def delivered_nothing(self) -> bool:
        """After a send failed: True when the server cannot have the message (no connection, or the
        conversation broke before DATA); False when it may have it."""
        return self.connection is None or not getattr(self.connection, "data_started", True)

    def _send(self, email_message):
        if self.connection is not None:
            self.connection.data_started = False  # until this message's MAIL FROM
        if not isinstance(email_message, CampaignEmail) or not email_message.recipients():
            return super()._send(email_message)
        # As Django's _send, in the same order (the same error first), with the bytes written directly.
        encoding = email_message.encoding or settings.DEFAULT_CHARSET
        from_email = smtp_address(email_message.from_email, encoding)
        recipients = [smtp_address(addr, encoding) for addr in email_message.recipients()]
        wire = email_message.wire_bytes()
        if wire is None:
            return super()._send(email_message)
        try:
            self.connection.sendmail(from_email, recipients, wire)
        except smtplib.SMTPException:
            if not self.fail_silently:
                raise
            return False
        return True


class Envelope(NamedTuple):
    sender: str
    recipients: list[str]
    data: bytes


outbox: list[Envelope] = []  # what MemoryBackend "sent", oldest first; whoever reads it clears it


class _MemoryConnection:
    """Stands in for smtplib.SMTP: keeps what would have been sent."""

    def sendmail(self, from_addr, to_addrs, msg, mail_options=(), rcpt_options=()) -> dict:
        outbox.append(Envelope(_envelope_address(from_addr), [_envelope_address(a) for a in to_addrs], msg))
        return {}  # no recipient refused


def _envelope_address(address: str) -> str:
    """The address as the SMTP backend's connection puts it in MAIL FROM and RCPT TO (envelope_quoted),
    without the angle brackets quoteaddr adds."""
    quoted = envelope_quoted(address)
    return quoted[1:-1] if quoted.startswith("<") and quoted.endswith(">") else quoted


class MemoryBackend(EmailBackend):
    """This backend with the network left out: each email becomes the envelope and bytes the SMTP
    backend would send (the same checks and serialisation), kept in `outbox`. Measures the sending
    pipeline alone, as it runs over SMTP; Django's locmem backend instead builds the MIME tree of every
    email (message()) and keeps a deep copy of the email object, work the SMTP path never does. The
    outbox is only emptied by whoever reads it."""

    def open(self) -> bool:
        if self.connection is not None:
            return False
        self.connection = _MemoryConnection()
        return True

    def close(self) -> None:
        self.connection = None
