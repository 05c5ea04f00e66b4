from django.apps import AppConfig


class CampaignsConfig(AppConfig):
    name = "campaigns"
    verbose_name = "Cross-sell campaigns"

    def ready(self):
        from customers.signals import orders_imported

        orders_imported.connect(_plan_for_new_orders, dispatch_uid="campaigns.plan_for_new_orders")
        orders_imported.connect(_attribute_new_orders, dispatch_uid="campaigns.attribute_new_orders")
        orders_imported.connect(_forget_stored_offers, dispatch_uid="campaigns.forget_stored_offers")

        from anymail.signals import tracking

        from .events import esp_tracking_receiver

        tracking.connect(esp_tracking_receiver, dispatch_uid="campaigns.esp_tracking")


def _plan_for_new_orders(sender, order_ids, **kwargs):
    from .tasks import plan_post_purchase

    # Runs after the import's transaction committed: the task sees the orders.
    plan_post_purchase.delay(order_ids=order_ids)


def _attribute_new_orders(sender, order_ids, **kwargs):
    from .tasks import attribute_orders

    attribute_orders.delay(order_ids=order_ids)


def _forget_stored_offers(sender, order_ids, **kwargs):
    from customers.models import Order

    from .models import StoredOffers

    # New history makes the stored offers stale (an offer may now be owned). A large import drops them
    # all: the API scores live until the nightly refresh, cheaper than listing every customer here.
    if len(order_ids) > 10_000:
        StoredOffers.objects.all().delete()
    else:
        customers = Order.objects.filter(pk__in=order_ids).values("customer_id")
        StoredOffers.objects.filter(customer_id__in=customers).delete()
