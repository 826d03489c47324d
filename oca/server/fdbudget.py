"""How a worker shares its open-file limit between client connections and everything else.

Theory of operation. Every descriptor a worker uses comes out of one per-process limit,
``RLIMIT_NOFILE``: client sockets (two descriptors each on plain HTTP, where the send
path keeps a duplicate of the socket, see :mod:`oca.server.protocol`; one on HTTPS),
the open-file cache (``storage.open_file_cache_size``), the disk probes, inventory
files, metrics snapshots and access log, the I/O threads' opens, and the miss path's
upstream sockets and part files. When client connections use up the limit, everything
else fails with ``EMFILE`` too: the disk probe cannot create its file and the disk is
failed, objects cannot be opened, and a new client is dropped without an answer.

So the limit is split up front. The supervisor raises the soft limit to the hard limit
at start (a shell's default soft limit is often 1024; the systemd unit sets
``LimitNOFILE=1048576``), and its workers inherit it. Each worker keeps a fixed reserve
and the miss path's and I/O threads' share, then gives the open-file cache its
configured size and client connections ``server.max_connections``, when the rest holds
both. When it does not, the cache gets at most a quarter of the rest and connections
what is left (:func:`plan_descriptors`). Connections beyond the plan get the documented
over-limit answer (503 with ``Retry-After: 1``, then close), so a flood of idle or slow
clients costs new clients a retry, never the disks or the connections being served.
"""

from __future__ import annotations

import contextlib
import resource
from dataclasses import dataclass

FDS_PER_CONNECTION = 2  # plain HTTP: the transport's socket and the send path's duplicate
FIXED_RESERVE = 256  # listeners, epoll, pipes, disk probes, inventories, logs, metrics
MIN_OPEN_FILES = 16
NR_OPEN_PATH = "/proc/sys/fs/nr_open"


@dataclass(frozen=True)
class DescriptorPlan:
    """One worker's share of its open-file limit."""

    connections: int  # client connections it accepts (at least 1)
    open_files: int  # entries of its open-file cache


def plan_descriptors(
    nofile: int,
    *,
    max_connections: int,
    open_file_cache_size: int,
    io_threads: int,
    upstream_connections: int,
    upstream_transfers: int,
) -> DescriptorPlan:
    """Split ``nofile`` descriptors (-1: unlimited) as the module docstring says."""
    if nofile < 0:
        return DescriptorPlan(max_connections, open_file_cache_size)
    rest = nofile - FIXED_RESERVE - io_threads - upstream_connections - 2 * upstream_transfers
    if rest >= open_file_cache_size + FDS_PER_CONNECTION * max_connections:
        return DescriptorPlan(max_connections, open_file_cache_size)
    files = min(open_file_cache_size, max(rest // 4, MIN_OPEN_FILES))
    conns = min(max_connections, max(1, (rest - files) // FDS_PER_CONNECTION))
    return DescriptorPlan(conns, files)


@dataclass(frozen=True)
class NofileLimit:
    """The open-file limit before and after :func:`raise_soft_limit`."""

    soft_before: int
    soft: int
    hard: int
    error: str = ""  # why the soft limit could not be raised, "" when it was (or was already)


def soft_limit() -> int:
    """This process's soft ``RLIMIT_NOFILE`` (-1 when unlimited)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return -1 if soft == resource.RLIM_INFINITY else int(soft)


def raise_soft_limit() -> NofileLimit:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit (capped at ``fs.nr_open``)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        target = 1 << 20
        with contextlib.suppress(OSError, ValueError), open(NR_OPEN_PATH) as fh:
            target = int(fh.read())
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:
            return NofileLimit(soft, soft, hard, str(exc))
        return NofileLimit(soft, target, hard)
    return NofileLimit(soft, soft, hard)
