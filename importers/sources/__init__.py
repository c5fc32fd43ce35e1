"""Importer sources by ``IMPORTER_SOURCE`` (CDI's names).

``SOURCES`` maps the scheme to a factory taking the settings; ``make_source`` raises
NotSupportedError for the schemes CDI has and we do not (yet).
"""

from __future__ import annotations

from collections.abc import Callable

from cdi.api.contract import ImportSettings
from cdi.common.errors import NotSupportedError
from cdi.datapath.source import Source
from importers.sources.blank import BlankSource
from importers.sources.http import HTTPSource

SOURCES: dict[str, Callable[[ImportSettings], Source]] = {
    "http": HTTPSource,
    "blank": BlankSource,
}
# CDI's importer calls the blank source "none".
SOURCES["none"] = BlankSource


def make_source(settings: ImportSettings) -> Source:
    """The source for ``settings.source``; NotSupportedError for anything not in SOURCES."""
    factory = SOURCES.get(settings.source)
    if factory is None:
        supported = ", ".join(sorted(k for k in SOURCES if k != "none"))
        raise NotSupportedError(f"source {settings.source!r} is not supported yet (supported: {supported})")
    return factory(settings)


__all__ = ["SOURCES", "BlankSource", "HTTPSource", "make_source"]
