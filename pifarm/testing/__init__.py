"""Test doubles: stand-ins for parts of the machine a test (or a dry run) cannot have.

    fake_configfs.py   FakeConfigfs: an in-memory nvmet configfs that refuses what the kernel
                       refuses, with the kernel's errnos (profiles 6.1 and 6.12); `persistent(FILE)`
                       keeps the tree in a JSON file across processes

Not product code: nothing here talks to a kernel, and nothing in the product depends on it.
Who may import it: the tests and benches (anything), and `pifarm.appliance` for exactly one
user-facing switch, `[target] configfs_root = "fake:FILE"` (try the target without root; see the
README). The components (target, registry, cache, initiator, inference) never import it; the
layering table in tests/test_layering.py enforces both directions.
"""
