"""The in-process revision notifier behind long-poll."""

from __future__ import annotations

import asyncio
import gc
import threading

from pifarm.registry.notify import FREEZE_FROM, RevisionNotifier


def test_many_waiters_all_wake_once_and_the_collector_is_unfrozen_after():
    async def main():
        n = RevisionNotifier(5)
        n._set(5, "p5")
        tasks = [asyncio.create_task(n.wait_past(5, 30)) for _ in range(FREEZE_FROM + 10)]
        await asyncio.sleep(0)
        assert n.waiters == FREEZE_FROM + 10
        # a commit happens in a worker thread
        t = threading.Thread(target=n.changed, args=(6, "p6"))
        t.start()
        t.join()
        results = await asyncio.wait_for(asyncio.gather(*tasks), 30)
        await asyncio.sleep(0)
        return n, results

    n, results = asyncio.run(main())
    assert all(results) and n.waiters == 0 and n.payload == "p6"
    assert gc.get_freeze_count() == 0


def test_timeout_returns_false_and_older_revisions_are_ignored():
    async def main():
        n = RevisionNotifier(3)
        n._set(3, "p3")
        n._set(2, "old")  # a late, older notification must not move the revision back
        assert (n.revision, n.payload) == (3, "p3")
        assert await n.wait_past(2, 0.01) is True  # already past: no wait
        return await n.wait_past(3, 0.05), n.waiters

    assert asyncio.run(main()) == (False, 0)
