"""Settings for bench/tracking_load.py: the real settings with bench/tracking_urls.py as the URLconf."""

from xsell_crm.settings import *  # noqa: F403

ROOT_URLCONF = "tracking_urls"
