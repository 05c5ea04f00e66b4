"""Recipients' endpoints: open pixel, click redirect, offer page, accept, unsubscribe, preferences."""

from django.http import Http404


def _not_yet(request, token):
    raise Http404("not implemented yet")


open_pixel = click = offer_page = accept = unsubscribe = one_click_unsubscribe = preferences = _not_yet
