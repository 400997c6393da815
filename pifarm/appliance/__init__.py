"""The appliance: the `pifarm` CLI, the one config loader, the daemons' wiring (aggregator, node),
setup, doctor and the demo.

It may import every other package; nothing imports it.
"""
