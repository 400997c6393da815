"""Signed documents and their verification: what the aggregator writes and every node checks.

Holds canonical JSON (`canonical`), Ed25519 keys and signatures (`signing`), model manifests
(`manifest`), the registry-wide snapshot (`snapshot`), BLAKE3 digests and the streaming
verifier every transport feeds (`integrity`), and the file walk a publish starts from (`files`).

A leaf package: it imports only `pifarm.errors` and other leaf packages, and anyone may import
it. There is one verification routine (`integrity.StreamVerifier`) for every transport.
"""
