"""The ranking model: time-split training examples, model selection on a validation period, scoring.

Each cutoff c gives examples (customer, candidate) with features from history before c and label =
bought the candidate in [c, c + horizon). The most recent cutoff is the validation period that picks the
algorithm and its hyper-parameters; the chosen one is then refitted on every cutoff. Negatives are
subsampled for speed and the predicted odds corrected by the sampling rate, so scores stay
probabilities (of buying the product within the horizon, for a customer who buys again).
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .candidates import ItemStats, item_stats_fit
from .features import FEATURES, candidates_build, features_build, profiles_build, sources_compute
from .metrics import rank_top, ranking_metrics

log = logging.getLogger(__name__)

COMPLEMENT_PRIOR = 0.3
# Scoring: trees that rank every candidate before only the best CASCADE_KEEP * k per customer are
# finished (at least CASCADE_MIN); see Recommender.predict.
CASCADE_TREES = 30
CASCADE_KEEP = 5
CASCADE_MIN = 40
CANDIDATES = {"train": 150, "score": 50}
GRID = [
    (
        "hist_gradient_boosting",
        {"learning_rate": 0.1, "max_leaf_nodes": 15, "max_iter": 120, "min_samples_leaf": 50},
    ),
    (
        "hist_gradient_boosting",
        {"learning_rate": 0.1, "max_leaf_nodes": 31, "max_iter": 120, "min_samples_leaf": 200},
    ),
    ("logistic_regression", {"C": 1.0}),
]


@dataclass
class Recommender:
    stats: ItemStats
    classifier: object | None
    product_ids: np.ndarray  # item index -> Product pk, as catalogued at training time
    neg_rate: float = 1.0
    algorithm: str = "fallback"
    params: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    features: list[str] = field(default_factory=lambda: list(FEATURES))

    def predict(
        self,
        x: np.ndarray,
        sources: dict[str, np.ndarray],
        *,
        rows: np.ndarray | None = None,
        keep_per_row: int | None = None,
    ) -> np.ndarray:
        """Scores in [0, 1). With rows and keep_per_row, a boosted model first scores every pair with
        its first CASCADE_TREES trees and finishes only each row's keep_per_row best (and every
        complement); the other pairs get NaN, which no comparison with a minimum score lets through."""
        if self.classifier is None:
            return fallback_scores(sources)
        complement = np.minimum(sources["complement"], 1.0)
        p = self._proba(x, rows, keep_per_row, complement)
        odds = p / np.maximum(1.0 - p, 1e-9) * self.neg_rate
        out = odds / (1.0 + odds)
        # The marketer's complements carry knowledge the history may not have: lift them explicitly.
        return out + (1.0 - out) * COMPLEMENT_PRIOR * complement

    def _proba(self, x, rows, keep_per_row, complement) -> np.ndarray:
        staged = getattr(self.classifier, "staged_decision_function", None)
        n_trees = getattr(self.classifier, "n_iter_", 0)
        if rows is None or keep_per_row is None or staged is None or n_trees < 2 * CASCADE_TREES:
            return self.classifier.predict_proba(x)[:, 1]
        counts = np.bincount(rows)
        if counts.max(initial=0) <= keep_per_row:
            return self.classifier.predict_proba(x)[:, 1]
        x = np.asarray(x, dtype=np.float64)  # what the trees compare with: convert once, not per stage
        # Every tree costs one pass over the pairs; the first trees already sort the hopeless
        # majority of a customer's few hundred candidates to the bottom.
        partial = next(itertools.islice(staged(x), CASCADE_TREES - 1, None))
        order = np.lexsort((-partial, rows))
        rank = np.empty(len(rows), np.int64)
        rank[order] = np.arange(len(rows)) - np.searchsorted(rows[order], rows[order], side="left")
        finish = np.flatnonzero((rank < keep_per_row) | (complement > 0))
        p = np.full(len(rows), np.nan)
        p[finish] = self.classifier.predict_proba(x[finish])[:, 1]
        return p


def fallback_scores(cols: dict[str, np.ndarray]) -> np.ndarray:
    """Without a trained model: a fixed blend of the normalised sources, squashed into [0, 1)."""
    raw = (
        cols["complement"]
        + cols["co_anchor"]
        + 0.5 * cols["co_recent"]
        + 0.5 * cols["seq_anchor"]
        + 0.25 * cols["seq_recent"]
        + 0.25 * cols["cust_recent"]
        + 0.02 * np.exp(cols["pop_30"] - cols["pop_30"].max() if len(cols["pop_30"]) else 0)
    )
    return raw / (1.0 + raw)


# OpenMP threads spin while waiting: on a busy machine (web, worker and database on 2 cores) one
# thread per process trains several times faster than two. Raise it on a dedicated training box.
THREADS = int(os.environ.get("RECOMMENDER_THREADS", "1"))


_controller = None


def _threads():
    """Limit OpenMP/BLAS threads for a block. The controller scans the loaded libraries once per process
    (~15 ms, too much for an API request); limiting through it afterwards costs microseconds."""
    global _controller
    if _controller is None:
        import sklearn.ensemble  # noqa: F401  (loads the OpenMP runtime the controller must see)
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
    return _controller.limit(limits=THREADS)


def _make(algorithm: str, params: dict, seed: int):
    # sklearn is imported here, not at module level: it costs ~2 s of start-up to every management
    # command and web process that merely imports the recommender.
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if algorithm == "hist_gradient_boosting":
        return HistGradientBoostingClassifier(random_state=seed, early_stopping=False, **params)
    return make_pipeline(
        SimpleImputer(strategy="median", add_indicator=True),
        StandardScaler(),
        LogisticRegression(max_iter=500, **params),
    )


@dataclass
class ExampleSet:
    pairs: pd.DataFrame  # r, item, label
    x: np.ndarray
    truth: pd.DataFrame  # r, item bought in the horizon
    owned: pd.DataFrame  # r, item owned before the cutoff
    n_customers: int


def examples_build(
    *,
    lines: pd.DataFrame,
    catalogue,
    cutoff: float,
    horizon_days: float,
    max_customers: int,
    rng: np.random.Generator,
    per_source: int = CANDIDATES["train"],
) -> ExampleSet | None:
    t = lines["t"].to_numpy()
    before = lines.loc[t < cutoff]
    after = lines.loc[(t >= cutoff) & (t < cutoff + horizon_days) & ~lines["returned"].to_numpy()]
    known = before.loc[~before["returned"].to_numpy(), "customer"].unique()
    customers = np.intersect1d(known, after["customer"].unique())
    if len(customers) < 5:
        return None
    if len(customers) > max_customers:
        customers = np.sort(rng.choice(customers, max_customers, replace=False))
    stats = item_stats_fit(lines=before, catalogue=catalogue, end_t=cutoff)
    profiles = profiles_build(lines=before, customer_ids=customers, as_of=np.full(len(customers), cutoff))
    sources = sources_compute(stats=stats, profiles=profiles)
    pairs = candidates_build(
        stats=stats, profiles=profiles, sources=sources, per_source=per_source, owned_policy="all"
    )
    x = features_build(stats=stats, profiles=profiles, sources=sources, pairs=pairs)
    r_after = pd.Index(customers).get_indexer(after["customer"])
    truth = pd.DataFrame({"r": r_after, "item": after["item"].to_numpy()}).loc[r_after >= 0].drop_duplicates()
    n_items = np.int64(catalogue.n_items)
    truth_keys = truth["r"].to_numpy(np.int64) * n_items + truth["item"].to_numpy()
    pairs["label"] = np.isin(pairs["r"].to_numpy(np.int64) * n_items + pairs["item"].to_numpy(), truth_keys)
    return ExampleSet(
        pairs=pairs, x=x, truth=truth, owned=profiles.owned[["r", "item"]], n_customers=len(customers)
    )


def _subsample(sets: list[ExampleSet], neg_ratio: float, rng) -> tuple[np.ndarray, np.ndarray, float]:
    y = np.concatenate([s.pairs["label"].to_numpy() for s in sets])
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    rate = min(1.0, neg_ratio * max(n_pos, 1) / max(n_neg, 1))
    xs, ys = [], []
    for s in sets:
        label = s.pairs["label"].to_numpy()
        keep = label | (rng.random(len(label)) < rate)
        xs.append(s.x[keep])
        ys.append(label[keep])
    return np.concatenate(xs), np.concatenate(ys).astype(np.int8), rate


def set_metrics(s: ExampleSet, scores: np.ndarray, n_items: int, k: int = 10) -> dict[str, float]:
    out = {}
    r, item = s.pairs["r"].to_numpy(), s.pairs["item"].to_numpy()
    owned_col = s.x[:, FEATURES.index("owned")] > 0
    for mode, keep in (("all", np.ones(len(r), bool)), ("explore", ~owned_col)):
        top = rank_top(rows=r[keep], items=item[keep], scores=scores[keep], n_rows=s.n_customers, k=k)
        m = ranking_metrics(
            top=top,
            truth_rows=s.truth["r"].to_numpy(),
            truth_items=s.truth["item"].to_numpy(),
            owned_rows=s.owned["r"].to_numpy(),
            owned_items=s.owned["item"].to_numpy(),
            n_items=n_items,
        )
        if mode == "all":
            out.update({f"recall@{k}": m[f"recall@{k}"], f"ndcg@{k}": m[f"ndcg@{k}"]})
        else:
            out[f"explore_recall@{k}"] = m[f"explore_recall@{k}"]
    return out


def recommender_train(**kwargs) -> Recommender:
    with _threads():
        return _train(**kwargs)


def _train(
    *,
    lines: pd.DataFrame,
    catalogue,
    end_t: float | None = None,
    horizon_days: float = 30.0,
    n_cutoffs: int = 6,
    max_customers: int = 20_000,
    neg_ratio: float = 10.0,
    grid: list[tuple[str, dict]] | None = None,
    seed: int = 0,
) -> Recommender:
    rng = np.random.default_rng(seed)
    grid = grid or GRID
    placed_t = lines.loc[~lines["returned"].to_numpy(), "t"]
    end_t = float(placed_t.max()) + 1e-6 if end_t is None else float(end_t)
    cutoffs = [end_t - horizon_days * j for j in range(1, n_cutoffs + 1)]
    sets = []
    for i, cutoff in enumerate(cutoffs):
        if sum(s.n_customers for s in sets[1:]) >= 2 * max_customers:
            break  # a big shop fills the example budget from its most recent periods
        started = time.monotonic()
        cap = max_customers if i else min(max_customers, 5_000)
        s = examples_build(
            lines=lines,
            catalogue=catalogue,
            cutoff=cutoff,
            horizon_days=horizon_days,
            max_customers=cap,
            rng=rng,
        )
        if s is not None:
            sets.append(s)
            log.info(
                "cutoff %d: %d customers, %d pairs (%.1fs)",
                i,
                s.n_customers,
                len(s.pairs),
                time.monotonic() - started,
            )
    stats = item_stats_fit(lines=lines, catalogue=catalogue, end_t=end_t)
    product_ids = catalogue.products["id"].to_numpy(np.int64)
    has_labels = [s for s in sets if s.pairs["label"].any()]
    if len(has_labels) < 2:
        # Too little history for a time split: ship the normalised blend and say so.
        return Recommender(
            stats=stats, classifier=None, product_ids=product_ids, params={"reason": "too little history"}
        )

    # One ranker for new and own products alike: the "owned", "own_orders" and "days_since_item"
    # features let it learn when a repeat is likely, and explore mode simply filters owned candidates.
    valid, train_sets = has_labels[0], has_labels[1:]
    x_train, y_train, _ = _subsample(train_sets, neg_ratio, rng)
    results = []
    for algorithm, params in grid:
        started = time.monotonic()
        model = _make(algorithm, params, seed).fit(x_train, y_train)
        m = set_metrics(valid, model.predict_proba(valid.x)[:, 1], catalogue.n_items)
        m["objective"] = m["recall@10"] + m["explore_recall@10"]
        results.append((m["objective"], algorithm, params, m))
        log.info("%s %s: %s (%.1fs)", algorithm, params, m, time.monotonic() - started)
    _, algorithm, params, valid_metrics = max(results, key=lambda r: r[0])
    x_all, y_all, rate = _subsample(has_labels, neg_ratio, rng)
    classifier = _make(algorithm, params, seed).fit(x_all, y_all)
    return Recommender(
        stats=stats,
        classifier=classifier,
        product_ids=product_ids,
        neg_rate=rate,
        algorithm=algorithm,
        params={
            **params,
            "horizon_days": horizon_days,
            "cutoffs": len(has_labels),
            "neg_ratio": neg_ratio,
            "seq_days": stats.seq_days,
            "candidates_per_source": CANDIDATES["train"],
            "training_rows": int(len(y_all)),
        },
        metrics={
            "validation": {k: round(v, 4) for k, v in valid_metrics.items()},
            "grid": [{"algorithm": a, "params": p, **m} for _, a, p, m in results],
        },
    )


def _restrict(s: ExampleSet, keep: np.ndarray) -> ExampleSet:
    return ExampleSet(
        pairs=s.pairs.loc[keep].reset_index(drop=True),
        x=s.x[keep],
        truth=s.truth,
        owned=s.owned,
        n_customers=s.n_customers,
    )


def recommender_rank(**kwargs) -> tuple[pd.DataFrame, object]:
    with _threads():
        return _rank(**kwargs)


def _rank(
    *,
    recommender: Recommender,
    lines: pd.DataFrame,
    customer_ids: np.ndarray,
    as_of: np.ndarray,
    anchor_orders: np.ndarray | None = None,
    owned_policy: str = "repurchasable",
    categories: np.ndarray | None = None,
    k: int = 10,
    per_source: int = CANDIDATES["score"],
    min_score: float = 0.0,
    stats: ItemStats | None = None,
    cascade: bool = True,
) -> tuple[pd.DataFrame, object]:
    """Top-k (r, item, score, sources...) per customer, plus the profiles (for reasons)."""
    stats = stats or recommender.stats
    profiles = profiles_build(
        lines=lines, customer_ids=customer_ids, as_of=as_of, anchor_orders=anchor_orders
    )
    sources = sources_compute(stats=stats, profiles=profiles)
    pairs = candidates_build(
        stats=stats,
        profiles=profiles,
        sources=sources,
        per_source=per_source,
        owned_policy=owned_policy,
        categories=categories,
    )
    x = features_build(stats=stats, profiles=profiles, sources=sources, pairs=pairs)
    cols = {name: x[:, i] for i, name in enumerate(FEATURES)}
    score = (
        recommender.predict(
            x,
            cols,
            rows=pairs["r"].to_numpy(),
            keep_per_row=max(CASCADE_KEEP * k, CASCADE_MIN) if cascade else None,
        )
        if len(pairs)
        else np.zeros(0)
    )
    columns = {"r": pairs["r"].to_numpy(), "item": pairs["item"].to_numpy(), "score": score}
    for name in (
        "co_anchor",
        "co_recent",
        "cust_recent",
        "seq_anchor",
        "seq_recent",
        "complement",
        "owned",
        "trend",
    ):
        columns[name] = cols[name]
    keep = np.flatnonzero(score >= min_score)  # NaN (not finished by the cascade) never passes
    r = columns["r"][keep]
    order = keep[np.lexsort((columns["item"][keep], -score[keep], r))]
    r = columns["r"][order]
    rank = np.arange(len(order)) - np.searchsorted(r, r, side="left")
    top = order[rank < k]
    return pd.DataFrame({name: values[top] for name, values in columns.items()}), profiles
