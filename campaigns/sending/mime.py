"""The email object a campaign sends: Django's EmailMultiAlternatives, serialised with less work.

At hundreds of emails a second, turning an email into bytes is a large part of sending it: the
stdlib's compat32 serialiser folds every header through email.header.Header (17 headers an email), and
for a multipart message without a boundary it compiles a new regular expression to choose one. So:

- a header that already is one short line of plain ASCII is written as it is, which is what Header
  makes of it (tests compare the two on generated values); any other header is folded as before;
- the boundary is chosen when the message is built: 128 random bits, checked against the parts' text,
  from the pooled random bytes (models.random_bytes) instead of a system call per email, which released
  the GIL and left the courier's thread waiting to get it back from the composing one.

Everything else (Django's header-injection checks, address and subject encoding, the parts' charset
and transfer encoding) is Django's and the stdlib's, unchanged.
"""

from __future__ import annotations

import re
from email.policy import Compat32

from django.core.mail import EmailMultiAlternatives

from ..models import random_bytes

# Printable ASCII words separated by single spaces: no folding, encoding or whitespace rules apply.
_PLAIN = re.compile(r"[\x21-\x7e]+(?: [\x21-\x7e]+)*\Z")


class _Policy(Compat32):
    def _fold(self, name, value, sanitize):
        if (
            isinstance(value, str)
            and len(name) + 2 + len(value) <= (self.max_line_length or 78)
            and _PLAIN.match(value)
        ):
            return f"{name}: {value}{self.linesep}"
        return super()._fold(name, value, sanitize)


POLICY = _Policy()


class CampaignEmail(EmailMultiAlternatives):
    def message(self):
        msg = super().message()
        msg.policy = POLICY  # the serialiser takes the top message's policy for every part
        if msg.is_multipart():
            texts = [self.body, *(a[0] for a in self.alternatives)]
            texts += [a[1] for a in self.attachments if isinstance(a, tuple)]  # not a MIMEBase one
            while True:
                boundary = f"=_{random_bytes(16).hex()}"
                if not any(isinstance(t, str) and boundary in t for t in texts):
                    break
            msg.set_boundary(boundary)
        return msg
