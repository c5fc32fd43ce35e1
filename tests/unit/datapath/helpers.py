"""Small stand-ins for the data path's unit tests."""

from __future__ import annotations

import io


class BytesStream:
    """A ``Stream`` over bytes in memory."""

    def __init__(self, data: bytes) -> None:
        self.f = io.BytesIO(data)

    def readinto(self, buf: memoryview) -> int:
        return self.f.readinto(buf)

    def close(self) -> None:
        pass
