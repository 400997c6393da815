"""`kill -USR1 <pid>` prints every thread's stack to stderr, safely, on a busy daemon.

faulthandler's all-thread dump walks the other threads' frames from inside the C signal handler
while they keep running; on a serving node that crashed the process with SIGSEGV (issue 19).
Here the Python-level handler (run by the main thread between bytecodes) only writes one byte
to a pipe; a daemon thread woken by it takes `sys._current_frames()` (a snapshot taken under the
GIL) and formats it as ordinary Python code. Threads Python did not start (TFLite's, BLAS's) are
listed by their kernel name from /proc so that the dump names every thread of the process.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback


def _native_names() -> dict[int, str]:
    """tid -> kernel thread name, for every thread of this process (empty where /proc is absent)."""
    out: dict[int, str] = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                out[int(tid)] = f.read().strip()
        except (OSError, ValueError):
            continue  # the thread ended meanwhile
    return out


def format_dump() -> str:
    frames = sys._current_frames()
    threads = {t.ident: t for t in threading.enumerate()}
    native = _native_names()
    parts = [f"=== pifarm thread dump: pid {os.getpid()}, {time.strftime('%Y-%m-%dT%H:%M:%S%z')}, "
             f"{len(frames)} Python threads, {len(native)} threads in all ==="]
    seen: set[int] = set()
    for ident, frame in frames.items():
        t = threads.get(ident)
        name = t.name if t is not None else "(not started by threading)"
        tid = getattr(t, "native_id", None)
        if tid is not None:
            seen.add(tid)
        flags = " daemon" if t is not None and t.daemon else ""
        parts.append(f'--- thread "{name}" tid {tid if tid is not None else "?"}{flags} ---')
        parts.append("".join(traceback.format_stack(frame)).rstrip("\n"))
    others = sorted(set(native) - seen)
    if others:
        parts.append("--- threads without Python frames (native) ---")
        parts.extend(f'thread "{native[tid]}" tid {tid}' for tid in others)
    parts.append("=== end of thread dump ===")
    return "\n".join(parts) + "\n"


def install(sig: signal.Signals = signal.SIGUSR1) -> None:
    """Dump every thread to stderr on `sig`; call from the main thread (signal.signal's rule)."""
    r, w = os.pipe()
    os.set_blocking(w, False)

    def on_signal(signum, frame) -> None:
        try:
            os.write(w, b"\0")  # async-signal-safe and reentrant; the dump happens elsewhere
        except OSError:
            pass  # pipe full: dumps are already pending

    def dumper() -> None:
        while True:
            os.read(r, 64)  # several signals in a row give one dump
            try:
                text = format_dump()
                sys.stderr.write(text)
                sys.stderr.flush()
            except Exception:  # a failed dump must never take the daemon down
                pass

    threading.Thread(target=dumper, name="thread-dump", daemon=True).start()
    signal.signal(sig, on_signal)
