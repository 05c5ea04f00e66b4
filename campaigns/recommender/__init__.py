"""Cross-sell recommender: candidates, features, model, baselines, evaluation."""
