"""Client prefixes: the configured ones plus those a BGP daemon put in the routing table.

Theory of operation
-------------------
An Open Connect style appliance learns which clients it serves from the ISP over BGP:
the ISP announces its customer prefixes to the appliance, and the appliance hands them
to the steering service, which sends a client to the appliances announcing the longest
prefix containing its address. Here the BGP session belongs to a routing daemon (BIRD,
FRR, ...) configured to export what it learns into a kernel routing table of its own,
for example BIRD's ``kernel { kernel table 100; }``, so the routes never steer the
box's own traffic. :func:`read_route_prefixes` dumps that table over rtnetlink
(pyroute2) and keeps the unicast routes of the configured protocols (the ``proto``
field the daemon stamps on its routes: ``bird`` = 12, ``bgp`` = 186 for FRR's
``bgpd``, ``zebra`` = 11; see ``/etc/iproute2/rt_protos``), optionally inside another
network namespace when the daemon lives in one. Default routes (``/0``) are skipped:
announcing "every address" would make this box the home of every client.

:func:`merge_prefixes` unions them with the static ``steering.prefixes`` and
deduplicates without aggregating: the steering service ranks by the longest matching
prefix, so two adjacent /24s must not be folded into a /23.

A failed read raises :class:`RoutesError` with a reason; the reporter keeps the prefixes
of the last good read and reports the reason in the health verdict rather than stop.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import socket
import threading
from collections.abc import Iterable
from typing import Final

from oca.errors import OcaError

__all__ = [
    "RT_PROTOCOLS",
    "RoutesError",
    "merge_prefixes",
    "protocol_number",
    "read_route_prefixes",
    "route_prefixes",
]

# Route protocol numbers (linux/rtnetlink.h, iproute2's rt_protos).
RT_PROTOCOLS: Final[dict[str, int]] = {
    "unspec": 0,
    "redirect": 1,
    "kernel": 2,
    "boot": 3,
    "static": 4,
    "gated": 8,
    "ra": 9,
    "mrt": 10,
    "zebra": 11,
    "bird": 12,
    "dnrouted": 13,
    "xorp": 14,
    "ntk": 15,
    "dhcp": 16,
    "keepalived": 18,
    "babel": 42,
    "openr": 99,
    "bgp": 186,
    "isis": 187,
    "ospf": 188,
    "rip": 189,
    "eigrp": 192,
}
RTN_UNICAST: Final = 1
CLONE_NEWNET: Final = 0x40000000
NETNS_RUN_DIR: Final = "/run/netns"  # where `ip netns add` binds named namespaces

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class RoutesError(OcaError):
    """The routing table could not be read; the message says why."""


def protocol_number(value: int | str) -> int:
    """The rtnetlink protocol number of ``value`` (a number or a name such as "bird")."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a route protocol")
    if isinstance(value, int):
        if not 0 <= value <= 255:
            raise ValueError(f"route protocol {value} is out of range 0..255")
        return value
    text = value.strip().lower()
    if text.isdigit():
        return protocol_number(int(text))
    if text not in RT_PROTOCOLS:
        known = ", ".join(sorted(RT_PROTOCOLS))
        raise ValueError(f"unknown route protocol {value!r} (known: {known}, or a number)")
    return RT_PROTOCOLS[text]


def route_prefixes(
    routes: Iterable[tuple[str, int, int, int, int]], table: int, protocols: frozenset[int]
) -> list[Network]:
    """The prefixes among ``(dst, dst_len, table, protocol, type)`` rows (pure).

    Keeps unicast routes of ``table`` whose protocol is in ``protocols`` (empty = any),
    skipping default routes; sorted and deduplicated.
    """
    out: set[Network] = set()
    for dst, length, tbl, proto, rtype in routes:
        if tbl != table or rtype != RTN_UNICAST or length == 0 or not dst:
            continue
        if protocols and proto not in protocols:
            continue
        out.add(ipaddress.ip_network(f"{dst}/{length}", strict=False))
    return sorted(out, key=_order)


def merge_prefixes(*groups: Iterable[str | Network]) -> list[str]:
    """Union of prefix lists, deduplicated, in a stable order (IPv4 first, then by address
    and length); never aggregated (see the module docstring)."""
    nets = {ipaddress.ip_network(p, strict=False) for g in groups for p in g}
    return [str(n) for n in sorted(nets, key=_order)]


def _order(n: Network) -> tuple[int, int, int]:
    return (n.version, int(n.network_address), n.prefixlen)


def read_route_prefixes(
    table: int, protocols: Iterable[int | str], netns: str = "", timeout: float = 10.0
) -> list[str]:
    """Dump ``table`` over rtnetlink (blocking) and return its client prefixes.

    ``netns`` names a network namespace (as ``ip netns`` does, under /run/netns) to
    read in; it must exist. The dump then runs in a short-lived thread that joins the
    namespace first (setns(2) moves only the calling thread, and the thread ends with
    the dump), so nothing is forked from the caller. Raises :class:`RoutesError` when
    the table cannot be read within ``timeout`` seconds.
    """
    protos = frozenset(protocol_number(p) for p in protocols)
    where = f"table {table}" + (f" in network namespace {netns}" if netns else "")
    if not netns:
        rows = _dump(table, where)
    else:
        result: list[list[tuple[str, int, int, int, int]] | BaseException] = []

        def run() -> None:
            try:
                _enter_netns(netns)
                result.append(_dump(table, where))
            except BaseException as exc:
                result.append(exc)

        t = threading.Thread(target=run, name=f"oca-routes-{netns}", daemon=True)
        t.start()
        t.join(timeout)
        if not result:
            raise RoutesError(f"cannot read {where}: no answer within {timeout:g} s")
        outcome = result[0]
        if isinstance(outcome, RoutesError):
            raise outcome
        if isinstance(outcome, OSError):
            raise RoutesError(f"cannot read {where}: {outcome.strerror or outcome}") from None
        if isinstance(outcome, BaseException):
            raise RoutesError(f"cannot read {where}: {type(outcome).__name__}: {outcome}")
        rows = outcome
    return [str(n) for n in route_prefixes(rows, table, protos)]


def _enter_netns(name: str) -> None:
    """Move the calling thread into the network namespace ``name`` (setns(2))."""
    if "/" in name or name in ("", ".", ".."):
        raise OSError(errno.EINVAL, f"{name!r} is not a namespace name")
    fd = os.open(os.path.join(NETNS_RUN_DIR, name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)


def _dump(table: int, where: str) -> list[tuple[str, int, int, int, int]]:
    """(dst, dst_len, table, protocol, type) of the routes of ``table`` in this thread's
    network namespace."""
    try:
        from pyroute2 import IPRoute
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise RoutesError(f"cannot read {where}: pyroute2 is not installed ({exc})") from None
    rows: list[tuple[str, int, int, int, int]] = []
    try:
        with IPRoute() as ipr:
            for family in (socket.AF_INET, socket.AF_INET6):
                for msg in ipr.route("dump", family=family, table=table):
                    tbl = msg.get_attr("RTA_TABLE")
                    rows.append(
                        (
                            msg.get_attr("RTA_DST") or "",
                            int(msg["dst_len"]),
                            int(tbl if tbl is not None else msg["table"]),
                            int(msg["proto"]),
                            int(msg["type"]),
                        )
                    )
    except Exception as exc:
        # pyroute2 raises OSError subclasses and its own NetlinkError; anything else
        # from a dump is equally a failed read.
        raise RoutesError(f"cannot read {where}: {type(exc).__name__}: {exc}") from None
    return rows
