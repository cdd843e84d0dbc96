"""IP addresses as wsfs compares them: one canonical form for each host.

The FTP bounce guard, the HTTP MOVE same-server check and the per-client
limits all ask whether two addresses are the same client or server.  A
dual-stack listener reports an IPv4 client as ``::ffff:a.b.c.d``, IPv6 has
many spellings of one address (``0:0::1`` is ``::1``), and a zone
(``fe80::1%eth0``) names a link on the machine that wrote it, not part of
the address; this module is the one place that folds all three away.
"""

from __future__ import annotations

import functools
import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@functools.lru_cache(maxsize=256)
def canonical_ip(host: str) -> IPAddress:
    """The address ``host`` spells, zone dropped, IPv4-mapped IPv6 as IPv4.

    Raises ValueError when ``host`` is not an IP literal.  Cached: the same
    few peer addresses are compared again on every connection (FTP asks 4
    times per small file fetched, ~30 us a parse); errors are not cached.
    """
    address = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
