"""pifarm appliance."""
