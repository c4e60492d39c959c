"""No garbage collection while much is made at once (an index, a poll's matches, a million rows)."""

from __future__ import annotations

import gc
import threading
from contextlib import contextmanager
from typing import Iterator

_collection_off = threading.Lock()
_collection_off_count = 0


@contextmanager
def no_collection(active: bool = True) -> Iterator[None]:
    """No garbage collection inside (for the whole process: `gc` is global); nested or from
    several threads at once, it is turned back on when the last one leaves, if it was on."""
    global _collection_off_count
    if not active:
        yield
        return
    with _collection_off:
        if _collection_off_count == 0:
            no_collection.was_enabled = gc.isenabled()  # type: ignore[attr-defined]
            gc.disable()
        _collection_off_count += 1
    try:
        yield
    finally:
        with _collection_off:
            _collection_off_count -= 1
            if _collection_off_count == 0 and no_collection.was_enabled:  # type: ignore[attr-defined]
                gc.enable()
