"""The administrators' live status page of a front end (``/-/status``).

``status_endpoint(reactor, transfers, snapshot)`` builds the endpoint a
``WsSite`` mounts; the page itself is plain HTML, CSS and JavaScript in
``static/``, shipped as package data and served without a build step.
"""

from wsfront.status.endpoint import StatusEndpoint, status_endpoint

__all__ = ["StatusEndpoint", "status_endpoint"]
