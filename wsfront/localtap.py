"""``twistd wslocal``: the Options and makeService the plugin points at."""

from __future__ import annotations

from twisted.application.service import IService

from wsfront.local import LocalOptions as Options

__all__ = ["Options", "makeService"]


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    from wsfront.local import LocalClusterService, freeze_start_up_objects

    cluster = LocalClusterService(reactor, options)
    cluster.ready.addCallback(freeze_start_up_objects)
    return cluster
