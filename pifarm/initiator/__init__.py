"""pifarm initiator."""
