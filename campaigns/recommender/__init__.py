"""Cross-sell recommender: candidates, features, model, baselines, evaluation."""

from .service import Recommendation, recommend_for_customers

__all__ = ["Recommendation", "recommend_for_customers"]
