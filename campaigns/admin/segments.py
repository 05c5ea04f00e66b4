"""Admin for segments."""
