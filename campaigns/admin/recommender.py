"""Admin for recommender."""
