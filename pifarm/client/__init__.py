"""The aggregator's HTTP client, for the node (metadata long-poll, manifests, blobs) and the CLI
(publish, promote, rollback, retire, listings) alike.

    http    AggregatorClient, the one httpx error mapping (`http_errors`, `error_for`)
    tls     tls_context: the one client TLS context builder (CA bundle, mTLS certificate)

A leaf package: it imports only `pifarm.errors` and `pifarm.signed`, so the node side (which may
not import the registry service) and the appliance both use it. httpx is imported with
`pifarm.client.http`, not with this package.
"""
