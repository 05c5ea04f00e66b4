"""Offline evaluation on what is in the database: a fresh model and the baselines, same protocol.

last-order: every customer with two or more placed orders has the last one held out; nothing from any
held-out order reaches training (item statistics, examples, validation). Each customer is scored as of
the moment of the held-out order, from the history before it.
time-split: history before the cutoff trains; customers who had bought before and buy in
[cutoff, cutoff + horizon) are scored as of the cutoff against everything they bought in that window.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime

import numpy as np
import pandas as pd

from .baselines import BASELINES
from .data import catalogue_load, lines_load, to_days
from .metrics import rank_top, ranking_metrics
from .model import CANDIDATES, recommender_rank, recommender_train

log = logging.getLogger(__name__)


def _split_last_order(lines: pd.DataFrame):
    placed = lines.loc[~lines["returned"].to_numpy()]
    orders = placed[["customer", "order", "t"]].drop_duplicates("order")
    orders = orders.sort_values(["customer", "t", "order"])
    n_orders = orders.groupby("customer")["order"].transform("size")
    last = orders.loc[n_orders >= 2].drop_duplicates("customer", keep="last")
    held = lines["order"].isin(last["order"]).to_numpy()
    test = placed.loc[placed["order"].isin(last["order"])]
    return lines.loc[~held], last["customer"].to_numpy(), last["t"].to_numpy(), test


def _split_time(lines: pd.DataFrame, cutoff: float, horizon_days: float):
    t = lines["t"].to_numpy()
    train = lines.loc[t < cutoff]
    window = lines.loc[(t >= cutoff) & (t < cutoff + horizon_days) & ~lines["returned"].to_numpy()]
    known = train.loc[~train["returned"].to_numpy(), "customer"].unique()
    customers = np.intersect1d(window["customer"].unique(), known)
    return train, customers, np.full(len(customers), cutoff), window.loc[window["customer"].isin(customers)]


def evaluation_run(
    *,
    protocol: str = "last-order",
    cutoff: datetime | None = None,
    horizon_days: int = 30,
    k: int = 10,
    mode: str = "explore",
    seed: int = 0,
) -> dict:
    if protocol not in {"last-order", "time-split"}:
        raise ValueError(f"unknown protocol {protocol!r} (last-order or time-split)")
    if mode not in {"explore", "all"}:
        raise ValueError(f"unknown mode {mode!r} (explore or all)")
    started = time.monotonic()
    catalogue = catalogue_load()
    lines = lines_load(catalogue=catalogue)
    if protocol == "last-order":
        train, customers, as_of, test = _split_last_order(lines)
    else:
        end = float(lines.loc[~lines["returned"].to_numpy(), "t"].max())
        cut = to_days(cutoff) if cutoff else end - horizon_days
        train, customers, as_of, test = _split_time(lines, cut, horizon_days)
    if not len(customers):
        raise ValueError("no customer to evaluate: too little history for this protocol")
    log.info(
        "loaded %d lines, %d test customers (%.1fs)", len(lines), len(customers), time.monotonic() - started
    )

    recommender = recommender_train(lines=train, catalogue=catalogue, horizon_days=horizon_days, seed=seed)
    log.info("trained %s (%.1fs)", recommender.algorithm, time.monotonic() - started)
    n_items = catalogue.n_items
    top_pairs, profiles = recommender_rank(
        recommender=recommender,
        lines=train,
        customer_ids=customers,
        as_of=as_of,
        owned_policy="none" if mode == "explore" else "all",
        k=k,
        per_source=CANDIDATES["train"],
    )
    truth_rows = pd.Index(customers).get_indexer(test["customer"])
    truth_items = test["item"].to_numpy()
    owned = profiles.owned

    def score(top: np.ndarray) -> dict[str, float]:
        m = ranking_metrics(
            top=top,
            truth_rows=truth_rows,
            truth_items=truth_items,
            owned_rows=owned["r"].to_numpy(),
            owned_items=owned["item"].to_numpy(),
            n_items=n_items,
        )
        return {
            name: round(m[name], 4)
            for name in (
                f"recall@{k}",
                f"explore_recall@{k}",
                f"repeat_recall@{k}",
                f"ndcg@{k}",
                f"hit_rate@{k}",
            )
        } | {
            "explore_customers": m["explore_customers"],
            "repeat_customers": m["repeat_customers"],
        }

    model_top = rank_top(
        rows=top_pairs["r"].to_numpy(),
        items=top_pairs["item"].to_numpy(),
        scores=top_pairs["score"].to_numpy(),
        n_rows=len(customers),
        k=k,
    )
    stats = recommender.stats
    baselines = {name: score(fn(stats=stats, profiles=profiles, k=k)) for name, fn in BASELINES.items()}
    result = {
        "protocol": protocol,
        "mode": mode,
        "k": k,
        "model": score(model_top),
        "algorithm": recommender.algorithm,
        "params": recommender.params,
        "validation": recommender.metrics.get("validation", {}),
        "baselines": baselines,
        "customers": int(len(customers)),
        "seconds": round(time.monotonic() - started, 1),
    }
    return result


def evaluation_table(result: dict) -> str:
    k = result["k"]
    names = [f"recall@{k}", f"explore_recall@{k}", f"repeat_recall@{k}", f"ndcg@{k}", f"hit_rate@{k}"]
    rows = [("model", result["model"])] + list(result["baselines"].items())
    width = max(len(n) for n, _ in rows) + 2
    out = ["".ljust(width) + "".join(n.rjust(20) for n in names)]
    for name, m in rows:
        out.append(name.ljust(width) + "".join(f"{m[n]:20.4f}" for n in names))
    return "\n".join(out)
