from django.urls import path

from .api import customer_recommendations

urlpatterns = [
    path(
        "customers/<str:external_id>/recommendations",
        customer_recommendations,
        name="api-customer-recommendations",
    ),
]
