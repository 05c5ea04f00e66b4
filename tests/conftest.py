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
