"""pifarm target."""
