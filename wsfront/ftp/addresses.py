"""FTP data-connection addresses: PORT/PASV, EPRT/EPSV (RFC 959, RFC 2428).

Also the guard Twisted's FTP server lacks: a PORT or EPRT may only point at
the control connection's own peer, on an unprivileged port, so the server
can't be used to bounce connections to third parties (the FTP bounce attack,
CERT CA-1997-27).  Errors carry the reply code to send.
"""

from __future__ import annotations

import functools
import ipaddress
import re

from attrs import frozen

from wsfront.netaddr import canonical_ip

_INET_FAMILIES = {"1": 4, "2": 6}


class AddressError(ValueError):
    """A data-connection address can't be used; ``code`` is the FTP reply."""

    code = 501


class UnsupportedFamily(AddressError):
    """EPRT/EPSV named a network protocol other than 1 (IPv4) or 2 (IPv6)."""

    code = 522


class BounceRefused(AddressError):
    """PORT/EPRT aimed at another host or a privileged port."""

    code = 504


@frozen
class HostPort:
    """An IP address (normalized text) and a TCP port."""

    host: str
    port: int


def _port(value: int | str) -> int:
    port = int(value)
    if not 1 <= port <= 65535:
        raise AddressError(f"port {port} is out of range")
    return port


# -- PORT / PASV ---------------------------------------------------------------

_PORT_ARG = re.compile(r"[0-9]{1,3}(?:,[0-9]{1,3}){5}")


def parse_port(argument: str) -> HostPort:
    """The address of ``PORT h1,h2,h3,h4,p1,p2``."""
    text = argument.strip(" ")
    if not _PORT_ARG.fullmatch(text):
        raise AddressError("expected PORT h1,h2,h3,h4,p1,p2")
    numbers = [int(n) for n in text.split(",")]
    if any(n > 255 for n in numbers):
        raise AddressError("each PORT field must be 0-255")
    host = ".".join(str(n) for n in numbers[:4])
    return HostPort(host, _port(numbers[4] * 256 + numbers[5]))


@functools.lru_cache(maxsize=64)
def _pasv_host(host: str) -> str:
    """``h1,h2,h3,h4`` of ``host``: parsed once per address (a control
    connection advertises the same one for every PASV, and a client of
    many small files sends a PASV for each; a refused one is not kept)."""
    address = canonical_ip(host)
    if not isinstance(address, ipaddress.IPv4Address):
        raise UnsupportedFamily("PASV can only describe IPv4 addresses; use EPSV")
    return ",".join(str(b) for b in address.packed)


def format_pasv(host: str, port: int) -> str:
    """``h1,h2,h3,h4,p1,p2`` for the 227 reply; IPv4 only (IPv6 needs EPSV)."""
    fields = _pasv_host(host)
    port = _port(port)
    return f"{fields},{port >> 8},{port & 0xFF}"


def pasv_reply_text(host: str, port: int) -> str:
    """The text of the 227 reply, in the form clients parse."""
    return f"Entering Passive Mode ({format_pasv(host, port)})."


# -- EPRT / EPSV ---------------------------------------------------------------


def parse_eprt(argument: str) -> HostPort:
    """The address of ``EPRT |1|132.235.1.2|6275|`` or ``EPRT |2|::1|6275|``.

    The delimiter is whatever printable character comes first (RFC 2428).
    """
    text = argument.strip(" ")
    if len(text) < 2 or not 33 <= ord(text[0]) <= 126:
        raise AddressError("expected EPRT |proto|address|port|")
    delimiter = text[0]
    fields = text.split(delimiter)
    if len(fields) != 5 or fields[0] or fields[4]:
        raise AddressError("expected EPRT |proto|address|port|")
    family, host, port = fields[1:4]
    if not (family.isascii() and family.isdigit()):
        # No protocol number at all (``EPRT ||||``) is a syntax error, not
        # a protocol this server lacks (522 is for those, RFC 2428 2).
        raise AddressError("expected EPRT |proto|address|port| with a protocol number")
    if family not in _INET_FAMILIES:
        raise UnsupportedFamily("network protocol not supported, use (1,2)")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise AddressError(f"bad network address {host[:60]!r}") from None
    if address.version != _INET_FAMILIES[family]:
        raise AddressError(f"address {host} is not of protocol {family}")
    if not port.isascii() or not port.isdigit() or len(port) > 5:
        raise AddressError(f"bad port {port[:20]!r}")
    return HostPort(str(address), _port(port))


def format_eprt(host: str, port: int) -> str:
    """``|1|addr|port|`` or ``|2|addr|port|``: the argument a client sends to EPRT."""
    address = ipaddress.ip_address(host)
    family = "1" if address.version == 4 else "2"
    return f"|{family}|{address}|{_port(port)}|"


@frozen
class EpsvRequest:
    """What ``EPSV [1|2|ALL]`` asked: ``all`` or a protocol family (None: any)."""

    all: bool = False
    family: int | None = None


def parse_epsv(argument: str) -> EpsvRequest:
    """The argument of EPSV: empty, ``1``, ``2`` or ``ALL`` (any case)."""
    text = argument.strip(" ")
    if not text:
        return EpsvRequest()
    if text.upper() == "ALL":
        return EpsvRequest(all=True)
    if text in _INET_FAMILIES:
        return EpsvRequest(family=_INET_FAMILIES[text])
    if text.isdigit():
        raise UnsupportedFamily("network protocol not supported, use (1,2)")
    raise AddressError("expected EPSV [1|2|ALL]")


def epsv_reply_text(port: int) -> str:
    """The text of the 229 reply: ``Entering Extended Passive Mode (|||port|)``."""
    return f"Entering Extended Passive Mode (|||{_port(port)}|)"


_EPSV_REPLY = re.compile(r"\((.)\1\1([0-9]{1,5})\1\)")


def parse_epsv_reply(text: str) -> int:
    """The port of a 229 reply text (the client side, for tests and tools)."""
    match = _EPSV_REPLY.search(text)
    if match is None:
        raise AddressError(f"no (|||port|) in {text[:80]!r}")
    return _port(match.group(2))


# -- bounce protection and port ranges -----------------------------------------


def check_active_target(
    target: HostPort, peer_host: str, *, allow_privileged: bool = False
) -> None:
    """Refuse a PORT/EPRT target other than the control peer or on a port < 1024.

    Addresses are compared as addresses, so ``::ffff:10.0.0.1`` is
    ``10.0.0.1``.  Raises ``BounceRefused``.
    """
    try:
        same = canonical_ip(target.host) == canonical_ip(peer_host)
    except ValueError:
        same = False
    if not same:
        raise BounceRefused("data connections go only to the address of the control connection")
    if target.port < 1024 and not allow_privileged:
        raise BounceRefused(f"data connections to privileged port {target.port} are refused")


def protocol_number(host: str) -> int:
    """RFC 2428's network protocol of a connection to ``host``: 1 for IPv4
    (an IPv4-mapped IPv6 address included: that client speaks IPv4), 2
    for IPv6."""
    try:
        return 1 if canonical_ip(host).version == 4 else 2
    except ValueError:
        return 2 if ":" in host else 1


def same_host(a: str, b: str) -> bool:
    """Whether two IP addresses name the same host (for accepting passive connections)."""
    try:
        return canonical_ip(a) == canonical_ip(b)
    except ValueError:
        return False


def parse_port_range(text: str) -> range:
    """The ports of ``--passive-ports LO-HI`` (both included) as a ``range``."""
    match = re.fullmatch(r"\s*([0-9]{1,5})\s*-\s*([0-9]{1,5})\s*", text)
    if match is None:
        raise ValueError(f"expected LO-HI, not {text!r}")
    low, high = int(match.group(1)), int(match.group(2))
    if not 1 <= low <= high <= 65535:
        raise ValueError(f"passive ports must satisfy 1 <= LO <= HI <= 65535, not {low}-{high}")
    return range(low, high + 1)
