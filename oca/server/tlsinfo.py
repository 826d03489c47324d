"""TLS for the HTTPS listeners and detection of kernel TLS.

Kernel TLS (the ``tls`` upper-layer protocol, Linux 4.13+) lets the kernel encrypt
records so that ``sendfile`` stays zero-copy on HTTPS. It is offered when
``/proc/sys/net/ipv4/tcp_available_ulp`` lists ``tls`` (the module may also be
loadable on demand, which a probe socket detects). The worker reports the result at
startup and as ``oca_ktls_available``. The HTTPS send path in this release uses
userspace TLS (the asyncio SSL transport) either way; see docs/serving.md.
"""

from __future__ import annotations

import socket
import ssl

_TCP_ULP = 31  # from linux/tcp.h


def ktls_available() -> bool:
    try:
        with open("/proc/sys/net/ipv4/tcp_available_ulp", encoding="ascii") as fh:
            if "tls" in fh.read().split():
                return True
    except OSError:
        pass
    # The module may be loadable on first use: try to attach the ULP to a
    # connected loopback socket (the only state where the kernel accepts it).
    try:
        with socket.socket() as srv:
            srv.bind(("127.0.0.1", 0))
            srv.listen(1)
            with socket.create_connection(srv.getsockname(), timeout=1) as cli:
                cli.setsockopt(socket.IPPROTO_TCP, _TCP_ULP, b"tls")
                return True
    except OSError:
        return False


def make_server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """Server context: TLS 1.2+, HTTP/1.1 ALPN, certificate chain from config."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.options |= ssl.OP_NO_COMPRESSION
    return ctx
