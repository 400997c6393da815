"""The farm's private PKI: X.509 primitives and host records (`certs`), the CA side of node
enrollment (`enrollment`), the aggregator's CA, server certificate and rotation, and a node's
client credentials and enrollment calls (`farm`).

A leaf package: it imports only `pifarm.errors` and other leaf packages, and both roles import
it (the aggregator issues, nodes enroll and renew). The enrollment HTTP routes are registry
service code and live in `pifarm.registry.enroll_api`.
"""
