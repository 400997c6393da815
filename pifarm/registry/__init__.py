"""The aggregator's registry service: the store, the metadata database, publish and
channel moves, the HTTP API and its long-poll notifier.

Only the aggregator imports it (through `pifarm.appliance`); what nodes also read lives in
the leaf packages `pifarm.signed`, `pifarm.volume`, `pifarm.durable` and `pifarm.pki`.
"""
