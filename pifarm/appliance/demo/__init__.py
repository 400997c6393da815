"""`pifarm demo`: the whole farm on one machine (farm.py), and the tiny deterministic TFLite
models it publishes, which tests and benches also use (samplemodel.py).

Part of the appliance: it may import every package; nothing but the CLI, tests and benches import it.
"""
