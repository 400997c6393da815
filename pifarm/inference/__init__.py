"""pifarm inference."""
