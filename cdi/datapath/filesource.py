"""A local file as a Source: for tests, benchmarks, and the upload server's scratch copy."""

from __future__ import annotations

import os

from cdi.api.contract import Reason
from cdi.common.errors import PermanentError
from cdi.datapath.source import NbdkitPlan, SourceInfo


class FileStream:
    def __init__(self, path: str, offset: int) -> None:
        self._f = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by close()
        if offset:
            self._f.seek(offset)

    def readinto(self, buf: memoryview) -> int:
        return self._f.readinto(buf) or 0

    def close(self) -> None:
        self._f.close()


class FileSource:
    """Serves a local file; ``supports_range=False`` makes it behave like a forward-only body."""

    def __init__(self, path: str, supports_range: bool = True) -> None:
        self.path = os.path.abspath(path)
        self.supports_range = supports_range

    def info(self) -> SourceInfo:
        try:
            size = os.stat(self.path).st_size
        except FileNotFoundError:
            raise PermanentError(f"{self.path} does not exist", reason=Reason.NOT_FOUND) from None
        return SourceInfo(size=size, supports_range=self.supports_range, description=self.path)

    def open(self, offset: int = 0) -> FileStream:
        if offset and not self.supports_range:
            raise PermanentError("this source cannot be re-opened at an offset", reason=Reason.NOT_SUPPORTED)
        try:
            return FileStream(self.path, offset)
        except FileNotFoundError:
            raise PermanentError(f"{self.path} does not exist", reason=Reason.NOT_FOUND) from None

    def nbdkit_plan(self) -> NbdkitPlan | None:
        if not self.supports_range:
            return None
        return NbdkitPlan(plugin="file", args=(f"file={self.path}",))

    def close(self) -> None:
        pass
