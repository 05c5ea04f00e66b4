"""Admin for campaigns."""
