"""Client prefixes from the kernel routing table, in a real network namespace.

Routes are installed with iproute2 exactly as a BGP daemon exports them (BIRD stamps
``proto bird``, FRR ``proto bgp``) into a table of their own, next to routes that must
not count: other protocols, other tables, default routes, blackholes.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import orjson

from tests.appliance import Appliance
from tests.health.conftest import STATIC_PREFIXES, steering_section
from tests.health.steering_stub import SteeringStub


def ip(netns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", netns, *args], check=True, capture_output=True, timeout=10)


def install_routes(netns: str) -> None:
    ip(netns, "route", "add", "10.77.0.0/16", "dev", "lo", "table", "100", "proto", "bird")
    ip(netns, "route", "add", "10.79.1.0/24", "dev", "lo", "table", "100", "proto", "186")
    ip(netns, "-6", "route", "add", "2001:db8:77::/48", "dev", "lo", "table", "100",
       "proto", "bird")  # fmt: skip
    # Not client prefixes of ours:
    ip(netns, "route", "add", "10.78.0.0/16", "dev", "lo", "table", "100", "proto", "static")
    ip(netns, "route", "add", "10.90.0.0/16", "dev", "lo", "table", "101", "proto", "bird")
    ip(netns, "route", "add", "default", "dev", "lo", "table", "100", "proto", "bird")
    ip(netns, "route", "add", "blackhole", "10.66.0.0/16", "table", "100", "proto", "bird")
    ip(netns, "route", "add", "10.55.0.0/16", "dev", "lo", "proto", "bird")  # main table


def discover_inside(netns: str, table: int, protocols: list[int | str]) -> list[str]:
    """Run the discovery function in a process inside the namespace."""
    code = (
        "import sys, orjson\n"
        "from oca.health.routes import read_route_prefixes\n"
        "table, protos = orjson.loads(sys.argv[1])\n"
        "sys.stdout.write(orjson.dumps(read_route_prefixes(table, protos)).decode())\n"
    )
    out = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", code,
         orjson.dumps([table, protocols]).decode()],
        check=True, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    return list(orjson.loads(out.stdout))


def test_discovery_finds_exactly_the_bgp_daemons_prefixes(netns: str) -> None:
    install_routes(netns)
    assert discover_inside(netns, 100, ["bird", "bgp"]) == [
        "10.77.0.0/16",
        "10.79.1.0/24",
        "2001:db8:77::/48",
    ]
    assert discover_inside(netns, 100, ["bird"]) == ["10.77.0.0/16", "2001:db8:77::/48"]
    assert discover_inside(netns, 100, [186]) == ["10.79.1.0/24"]
    # Any protocol: still unicast, non-default routes of table 100 only.
    assert discover_inside(netns, 100, []) == [
        "10.77.0.0/16",
        "10.78.0.0/16",
        "10.79.1.0/24",
        "2001:db8:77::/48",
    ]
    assert discover_inside(netns, 101, ["bird"]) == ["10.90.0.0/16"]
    assert discover_inside(netns, 102, []) == []


def test_appliance_reports_routed_prefixes_and_a_failed_read_as_a_reason(
    netns: str,
    stub: SteeringStub,
    secret: str,
    appliance_factory: Callable[[str], Appliance],
) -> None:
    install_routes(netns)
    extra = f'routes_table = 100\nroutes_protocols = ["bird", "bgp"]\nroutes_netns = "{netns}"'
    app = appliance_factory(steering_section([stub.url], secret, extra=extra))
    want = sorted(
        [*STATIC_PREFIXES, "10.77.0.0/16", "10.79.1.0/24", "2001:db8:77::/48"],
        key=lambda p: (":" in p, p),
    )
    b = stub.wait_for(lambda b: b.doc["health"]["state"] == "healthy")
    assert b.doc["prefixes"] == ["10.1.0.0/24", "10.77.0.0/16", "10.79.1.0/24",
                                 "2001:db8:1::/48", "2001:db8:77::/48"]  # fmt: skip
    assert sorted(b.doc["prefixes"], key=lambda p: (":" in p, p)) == want

    # The daemon learns one more prefix: the next heartbeats carry it.
    mark = stub.count()
    ip(netns, "route", "add", "10.88.0.0/16", "dev", "lo", "table", "100", "proto", "bird")
    stub.wait_for(lambda b: "10.88.0.0/16" in b.doc["prefixes"], after=mark)

    # The routes can no longer be read: a reason, the box degraded, the prefixes kept.
    mark = stub.count()
    subprocess.run(["ip", "netns", "del", netns], check=True, timeout=10)
    b = stub.wait_for(lambda b: b.doc["health"]["state"] == "degraded", after=mark)
    reasons = b.doc["health"]["reasons"]
    assert any(
        r.startswith(f"client prefixes from routes: cannot read table 100 in network namespace "
                     f"{netns}") for r in reasons
    ), reasons  # fmt: skip
    assert "10.88.0.0/16" in b.doc["prefixes"] and "10.1.0.0/24" in b.doc["prefixes"]
    assert app.log_text().count("client prefixes: cannot read table 100") == 1
