"""pifarm registry."""
