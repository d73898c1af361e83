"""The web dashboard at `/` (router.py serves static/)."""
