"""twistd plugin ``wsstorage``: one storage server (see wsstorage.service)."""

from twisted.application.service import ServiceMaker

wsstorage = ServiceMaker(
    "wsfs storage server", "wsstorage.service", "a wsfs storage server", "wsstorage"
)
