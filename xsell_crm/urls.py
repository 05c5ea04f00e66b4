from django.contrib import admin
from django.urls import include, path

from campaigns import tracking

admin.site.site_header = "xsell-crm"
admin.site.site_title = "xsell-crm"
admin.site.index_title = "Cross-sell"

urlpatterns = [
    # The open pixel and the click are most of the site's requests: matched first and without nested
    # includes (walking the list and its includes cost a tracked request ~40 µs, bench/README.md).
    path("t/o/<str:token>.gif", tracking.open_pixel, name="track-open"),
    path("t/c/<str:token>", tracking.click, name="track-click"),
    path("t/p/<str:token>", tracking.offer_click, name="track-offer"),
    path("t/h/<str:token>", tracking.honeypot_click, name="track-honeypot"),
    path("admin/", admin.site.urls),
    path("esp/", include("anymail.urls")),
    path("", include("campaigns.urls")),
]
