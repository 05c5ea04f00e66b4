"""Settings for the django-post-office comparison in bench/campaign_throughput.py (bench only).

The project's settings plus post_office; mail is queued in the database by post_office's backend and
delivered by `send_queued` over Django's SMTP backend (EMAIL_URL points it at the bench's sink).
"""

from xsell_crm.settings import *  # noqa: F403
from xsell_crm.settings import INSTALLED_APPS, LOGGING

INSTALLED_APPS = [*INSTALLED_APPS, "post_office"]
EMAIL_BACKEND = "post_office.EmailBackend"
POST_OFFICE = {
    "BACKENDS": {"default": "django.core.mail.backends.smtp.EmailBackend"},
    "DEFAULT_PRIORITY": "medium",
}
# post_office logs every batch at INFO on its own handler unless its logger is configured.
LOGGING = {
    **LOGGING,
    "loggers": {
        **LOGGING["loggers"],
        "post_office": {"handlers": ["console"], "level": "WARNING", "propagate": False},
    },
}
