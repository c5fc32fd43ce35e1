"""Advisory file locks that mark a running singleton process (controller, upload proxy)."""

from __future__ import annotations

import fcntl
import os


def lock_held(path: str) -> bool:
    """True while some process holds an exclusive flock on ``path``."""
    if not os.path.exists(path):
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
