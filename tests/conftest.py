import os
from pathlib import Path

import pytest

DATA_DIR = Path(os.environ.get("XSELL_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")
ONLINE_RETAIL = DATA_DIR / "online_retail"


@pytest.fixture
def online_retail_dir() -> Path:
    if not (ONLINE_RETAIL / "orders.csv.gz").exists():
        pytest.skip("the online_retail data set is not beside the repository (../shared/data)")
    return ONLINE_RETAIL


@pytest.fixture(autouse=True)
def _outbox_in_tmp(settings, tmp_path):
    settings.EMAIL_FILE_PATH = str(tmp_path / "outbox")
    settings.MODEL_DIR = tmp_path / "models"


@pytest.fixture(autouse=True)
def _fresh_recommender_cache():
    # The recommender caches its fallback model per process for a few minutes; each test has its own shop.
    from campaigns.recommender.service import cache_clear

    cache_clear()
    yield
    cache_clear()


@pytest.fixture(autouse=True)
def celery_eager(request):
    """Tasks run in the test's process (as in the embedded setup); tests/test_worker.py uses real workers."""
    from xsell_crm.celery import app

    eager = not request.node.get_closest_marker("real_worker")
    previous = app.conf.task_always_eager, app.conf.task_eager_propagates
    app.conf.task_always_eager, app.conf.task_eager_propagates = eager, True
    yield
    app.conf.task_always_eager, app.conf.task_eager_propagates = previous
