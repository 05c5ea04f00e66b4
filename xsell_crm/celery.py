import os

from celery import Celery
from celery.schedules import crontab

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "xsell_crm.settings")

app = Celery("xsell_crm")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# Fixed jobs; django-celery-beat's DatabaseScheduler copies them into the database beside the
# campaigns' own schedules, where the admin can see and pause them.
app.conf.beat_schedule = {
    "campaigns-tick": {"task": "campaigns.tick", "schedule": 60.0},
    "attribution-recent": {"task": "campaigns.attribute_recent", "schedule": 15 * 60.0},
    "tracking-flush": {"task": "campaigns.tracking_flush", "schedule": 10.0},
    "reports-refresh": {"task": "campaigns.refresh_reports", "schedule": 5 * 60.0},
    "recommender-nightly": {"task": "campaigns.train_recommender", "schedule": crontab(minute=30, hour=2)},
    # After the training slot: a newly trained version waits for activation, so this uses the active one.
    "offers-nightly": {"task": "campaigns.refresh_offers", "schedule": crontab(minute=30, hour=4)},
}
