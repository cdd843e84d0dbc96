"""``twistd wsfront``: the Options and makeService the plugin points at."""

from __future__ import annotations

from twisted.application.service import IService
from twisted.python import usage

from wsfront.config import FrontendOptions

__all__ = ["Options", "makeService"]


class Options(FrontendOptions):
    """FrontendOptions whose ``--storage`` endpoints must parse: a bad one
    is a usage error before anything is written to the catalog (which
    would keep it for every later front end)."""

    def postOptions(self) -> None:
        super().postOptions()
        from twisted.internet import reactor

        from wsfront.service import BadStorageEndpoint, check_storage_endpoints

        try:
            check_storage_endpoints(reactor, self.config.storage)
        except BadStorageEndpoint as e:
            raise usage.UsageError(str(e)) from None


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    from wsfront.service import FrontendService

    return FrontendService(reactor, options.config)
