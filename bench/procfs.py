"""What a server's processes hold, read from ``/proc``: descriptors and client connections.

A client connection counts as held by a process when one of the process's descriptors
is a TCP socket whose local port is the server's port and whose state is ESTABLISHED in
the process's network namespace (``/proc/<pid>/net/tcp`` and ``tcp6``). The socket's
inode ties the two together, so a socket open twice (the appliance keeps a duplicate of
each plain-HTTP client socket for its send path) counts once, and connections still in
the listen backlog, which no process holds yet, do not count. Half-closed sockets (a
408 sent and the write side shut, waiting for the client's end) are not ESTABLISHED.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass

TCP_ESTABLISHED = "01"
TCP_LISTEN = "0A"


def fd_count(pid: int) -> int:
    """Open descriptors of ``pid`` (0 when it is gone)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets ``pid`` has open (each once, however many descriptors)."""
    out: set[int] = set()
    base = f"/proc/{pid}/fd"
    try:
        names = os.listdir(base)
    except OSError:
        return out
    for name in names:
        with contextlib.suppress(OSError):
            target = os.readlink(f"{base}/{name}")
            if target.startswith("socket:["):
                out.add(int(target[8:-1]))
    return out


@dataclass(frozen=True)
class TcpSockets:
    """Sockets on the server's port, by inode: established ones and the rest (no LISTEN)."""

    established: frozenset[int]
    other: frozenset[int]  # CLOSE_WAIT, FIN_WAIT, ... (closing)


def port_sockets(pid: int, port: int) -> TcpSockets:
    """The TCP sockets (any process) with local port ``port``, in ``pid``'s namespace."""
    est: set[int] = set()
    other: set[int] = set()
    want = f":{port:04X}"
    for name in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{name}") as fh:
                next(fh, None)
                for line in fh:
                    f = line.split()
                    if len(f) < 10 or not f[1].endswith(want) or f[3] == TCP_LISTEN:
                        continue
                    (est if f[3] == TCP_ESTABLISHED else other).add(int(f[9]))
        except OSError:
            continue
    return TcpSockets(frozenset(est), frozenset(other))


def held_connections(pids: Iterable[int], port: int) -> dict[int, int]:
    """Established client connections on ``port`` that each process holds.

    Listing tens of thousands of descriptors takes a while (seconds on a busy machine),
    and connections come and go meanwhile: a socket counts when it is in a process's
    table and was ESTABLISHED at the start or at the end of the listing.
    """
    out: dict[int, int] = {}
    pids = list(pids)
    if not pids:
        return out
    first = port_sockets(pids[0], port)
    inodes = {pid: socket_inodes(pid) for pid in pids}
    established = first.established | port_sockets(pids[0], port).established
    for pid in pids:
        out[pid] = len(inodes[pid] & established)
    return out
