"""Run ids: random (version 4) UUIDs as 32 hex digits, drawn from a pool of
``os.urandom`` bytes (``uuid.uuid4().hex`` costs a short run 1.6 µs; this 0.3 µs).

The pool is dropped in a forked child, so parent and child never hand out the same
id.
"""

from __future__ import annotations

import os
import threading

__all__ = ["new_run_id"]

_BATCH = 16 * 256
_pool = b""
_at = _BATCH
_lock = threading.Lock()  # runs start in threads too (run_sync, a sync task's own run)


def new_run_id() -> str:
    """A fresh random UUID (version 4, RFC 4122 variant) as 32 lowercase hex digits."""
    global _pool, _at
    with _lock:
        if _at >= _BATCH:
            _pool = os.urandom(_BATCH)
            _at = 0
        raw = bytearray(_pool[_at : _at + 16])
        _at += 16
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # the RFC 4122 variant
    return raw.hex()


def _forget_pool() -> None:
    global _at, _lock
    _at = _BATCH
    _lock = threading.Lock()  # (a lock held by another thread at the fork stays held)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)
