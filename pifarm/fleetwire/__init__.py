"""What nodes and the aggregator exchange about the fleet: the node report and its bounds
(`report`), and the latency-histogram arithmetic the rollout gates use (`histogram`).

A leaf package: it imports only `pifarm.errors`, and both roles may import it (the node builds
reports, the aggregator parses them and compares cohorts). Rollout membership lives with the
signed snapshot that carries it (`pifarm.signed.cohort`).
"""
