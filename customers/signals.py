from django.dispatch import Signal

# Sent after a transaction that created or replaced orders commits: order_ids=[...].
# Attribution listens, so a purchase of an offered product counts as soon as it is known.
orders_imported = Signal()
