"""CPU per email for turning a rendered campaign email into the bytes SMTP sends, in one process.

    .venv/bin/python bench/email_bytes.py [--emails 5000]

The email is the demo template rendered for the sample customer with three offers (as a campaign
renders it, CSS inlined). Printed, in µs per email, best of three rounds:

- Django's SMTP path: EmailMessage.message() + as_bytes(), and sanitize_address() for sender and
  recipient (what django.core.mail.backends.smtp.EmailBackend does per email);
- the campaign backend's path: CampaignEmail.wire_bytes() and smtp_address() for both addresses
  (campaigns.sending.backend.EmailBackend);

and checks that both give the same bytes but for the boundary and the Date header. No database.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--emails", type=int, default=5000)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "xsell_crm.settings")
    os.environ.setdefault("SECRET_KEY", "bench-only-not-secret")
    import django

    django.setup()
    from django.core.mail.message import sanitize_address

    from campaigns.demo import DEMO_HTML, DEMO_TEXT
    from campaigns.rendering import email_render, sample_context
    from campaigns.sending.backend import smtp_address
    from campaigns.sending.mime import CampaignEmail

    context = sample_context()
    context["offers"] = (context["offers"] * 2)[:3]
    rendered = email_render(
        subject="{{ customer.first_name }}, these go with your order",
        html=DEMO_HTML,
        text=DEMO_TEXT,
        context=context,
        footer={"unsubscribe_url": "https://shop.example/u/abc", "pixel_url": "https://shop.example/o/abc"},
    )
    sender, recipient = "offers@shop.example", "ann.smith@example.com"

    def email(token: str) -> CampaignEmail:
        message = CampaignEmail(
            subject=rendered.subject,
            body=rendered.text,
            from_email=sender,
            to=[recipient],
            headers={
                "Message-ID": f"<{token}@shop.example>",
                "List-Unsubscribe": f"<https://shop.example/t/one-click/{token}.abcdefghijklmnop/>, "
                f"<mailto:unsubscribe@shop.example?subject=unsubscribe%20{token}>",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
                "X-Xsell-Campaign": "12",
                "X-Xsell-Message": token,
            },
        )
        message.attach_alternative(rendered.html, "text/html")
        return message

    # Per-message headers differ from email to email, as in a campaign (no cache hit for them).
    emails = [email(f"t{i:021d}") for i in range(args.emails)]

    def stock(e):
        sanitize_address(e.from_email, "utf-8"), [sanitize_address(a, "utf-8") for a in e.recipients()]
        return e.message().as_bytes(linesep="\r\n")

    def wire(e):
        smtp_address(e.from_email, "utf-8"), [smtp_address(a, "utf-8") for a in e.recipients()]
        return e.wire_bytes()

    mask = re.compile(rb"=_[0-9a-f]{32}|Date: [^\r]*")
    assert mask.sub(b"", stock(emails[0])) == mask.sub(b"", wire(emails[0])), "the two paths differ"
    print(f"{len(emails)} emails of {len(wire(emails[0])):,} bytes; µs of CPU per email, best of 3:")
    for label, path in (("Django's SMTP path", stock), ("campaign backend's path", wire)):
        best = min(_cpu(path, emails) for _ in range(3))
        print(f"  {label:24s} {best * 1e6 / len(emails):7.1f}")


def _cpu(path, emails) -> float:
    start = time.process_time()
    for e in emails:
        path(e)
    return time.process_time() - start


if __name__ == "__main__":
    main()
