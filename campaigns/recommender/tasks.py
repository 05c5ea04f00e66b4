"""Celery tasks: retrain the recommender (nightly) and keep every customer's next-best offers stored."""

from celery import shared_task


@shared_task(
    name="campaigns.train_recommender",
    queue="default",
    acks_late=True,
    max_retries=2,
    default_retry_delay=600,
)
def train_recommender(horizon_days: int = 30, activate: bool | None = None) -> int:
    """Store a new ModelVersion; returns its id. Activation stays an admin decision once one is active."""
    from .service import model_version_train

    return model_version_train(horizon_days=horizon_days, activate=activate).pk


@shared_task(name="campaigns.refresh_offers", queue="default", acks_late=True)
def refresh_offers() -> int:
    """Score every customer with the active model and store their offers; returns rows stored."""
    from .stored import offers_refresh

    return offers_refresh()
