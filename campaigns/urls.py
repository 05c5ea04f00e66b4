from django.urls import include, path

from . import tracking

urlpatterns = [
    path("api/v1/", include("campaigns.recommender.urls")),
    path("o/<str:token>", tracking.offer_page, name="offers"),
    path("a/<str:token>", tracking.accept, name="accept"),
    path("u/<str:token>", tracking.unsubscribe, name="unsubscribe"),
    path("u/<str:token>/one-click", tracking.one_click_unsubscribe, name="one-click"),
    path("p/<str:token>", tracking.preferences, name="preferences"),
]
