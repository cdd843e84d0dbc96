"""Each client address's share of a configured passive port range.

A ``--passive-ports`` range is small and shared by every client of a front
end; each PASV/EPSV holds one of its ports until a data connection reaches
it (or the accept timeout closes it).  One connection holds at most one
(a new PASV closes or reuses the last), but one address may open many
control connections (up to ``--max-connections-per-address``), and 60 of
them sending PASV once each took a 51-port range away from everyone else.
So an address may hold at most ``per_address`` ports of the range at once
(``--passive-ports-per-address``, half the range by default): over it,
PASV/EPSV gets 425 and other addresses still get ports.  With no range
configured (any free port) there is no share to keep: ports come from the
system's ephemeral range, which one client cannot exhaust for the others
without exhausting its own connection caps first.

Addresses are grouped as ``wsfront.limits`` groups them (an IPv6 client by
its /64); the FTP and implicit FTPS listeners of a front end share one
range, so they share one ``PassivePortShare``.
"""

from __future__ import annotations

from twisted.logger import Logger

from wsfront.limits import AddressCounts, address_key

log = Logger()


def default_per_address(size: int) -> int:
    """Half of a range of ``size`` ports, at least one."""
    return max(1, size // 2)


class PassivePortShare:
    """Ports of the range held per client address: ``refusal(host)`` before
    opening one (None: go ahead), ``hold(host)`` once it is open, and the
    callable ``hold`` returns when it stops listening."""

    def __init__(self, port_range: tuple[int, int], per_address: int | None = None) -> None:
        low, high = port_range
        self.size = high - low + 1
        self.per_address = (
            per_address if per_address is not None else default_per_address(self.size)
        )
        self._held = AddressCounts()
        #: Addresses refused since they last dropped under their share: one
        #: log line per episode, not one per PASV of a flood.
        self._logged: set[str] = set()

    def held(self, host: str) -> int:
        """Ports of the range ``host``'s address holds now."""
        return self._held.count(host)

    def refusal(self, host: str) -> str | None:
        """The 425 text if ``host``'s address holds its whole share; None if
        it may open one more port."""
        held = self._held.count(host)
        if held < self.per_address:
            return None
        key = address_key(host) or host
        if key not in self._logged:
            self._logged.add(key)
            log.warn(
                "refused PASV/EPSV from {host}: its address holds {held} of the {size} "
                "passive ports, its whole share (--passive-ports-per-address {share})",
                host=host,
                held=held,
                size=self.size,
                share=self.per_address,
            )
        return (
            f"Too many passive ports open from your address ({held} of {self.size}); "
            "use or close them, or wait for them to time out"
        )

    def hold(self, host: str):
        """Count one more port for ``host``'s address; returns the callable
        that gives it back (call it exactly once)."""
        self._held.add(host)

        def give_back() -> None:
            if self._held.remove(host) < self.per_address:
                self._logged.discard(address_key(host) or host)

        return give_back
