"""The campaigns admin, one module per area; importing them registers their ModelAdmins."""

from . import campaigns, recommender, segments  # noqa: F401
