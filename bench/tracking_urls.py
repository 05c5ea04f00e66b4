"""URLs for bench/tracking_load.py: the real site plus two bare views returning the same bytes.

The bare views run through the same middleware as the tracking views, so the ratio between them is the
cost of the tracking work itself (token check, one SELECT, one INSERT).
"""

from django.http import HttpResponse, HttpResponseRedirect
from django.urls import include, path
from django.views.decorators.http import require_safe

BARE_REDIRECT = "https://shop.example/p/1"


@require_safe
def bare_pixel(request, token):
    from campaigns.tracking import PIXEL, _private

    response = HttpResponse(PIXEL, content_type="image/gif")
    response["Pragma"] = "no-cache"
    response["Expires"] = "0"
    return _private(response)


@require_safe
def bare_click(request, token):
    from campaigns.tracking import _private

    return _private(HttpResponseRedirect(BARE_REDIRECT))


urlpatterns = [
    path("bare/o/<str:token>.gif", bare_pixel),
    path("bare/c/<str:token>", bare_click),
    path("", include("xsell_crm.urls")),
]
