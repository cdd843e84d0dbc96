"""twistd plugins ``wsfront`` (a front end) and ``wslocal`` (a whole local cluster)."""

from twisted.application.service import ServiceMaker

wsfront = ServiceMaker(
    "wsfs front end", "wsfront.tap", "FTP and HTTP front end of a wsfs cluster", "wsfront"
)
wslocal = ServiceMaker(
    "wsfs local cluster", "wsfront.localtap", "a whole wsfs cluster in one process", "wslocal"
)
