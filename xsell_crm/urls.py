from django.contrib import admin
from django.urls import include, path

admin.site.site_header = "xsell-crm"
admin.site.site_title = "xsell-crm"
admin.site.index_title = "Cross-sell"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("esp/", include("anymail.urls")),
    path("", include("campaigns.urls")),
]
