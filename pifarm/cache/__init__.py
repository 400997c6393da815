"""pifarm cache."""
