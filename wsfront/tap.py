"""``twistd wsfront``: the Options and makeService the plugin points at."""

from __future__ import annotations

from twisted.application.service import IService

from wsfront.config import FrontendOptions

__all__ = ["Options", "makeService"]


Options = FrontendOptions
"""The options; they check ``--storage`` endpoints parse (``config.parse_storage``)."""


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    from wsfront.service import FrontendService

    return FrontendService(reactor, options.config)
