"""The node's content-addressed model cache: blobs, refs, budget, scrub, tamper watch and the
node state file.

Node side: imports only leaf packages; the initiator and inference read and write through it.
"""
