"""``twistd wsfront``: the Options and makeService the plugin points at."""

from __future__ import annotations

from twisted.application.service import IService

from wsfront.config import FrontendOptions as Options

__all__ = ["Options", "makeService"]


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    from wsfront.service import FrontendService

    return FrontendService(reactor, options.config)
