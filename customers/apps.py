from django.apps import AppConfig


class CustomersConfig(AppConfig):
    name = "customers"
    verbose_name = "Customers and purchases"

    def ready(self) -> None:
        from .lookups import lookups_register

        lookups_register()
