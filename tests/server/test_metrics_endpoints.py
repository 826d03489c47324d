"""/metrics, /healthz and /readyz of a running appliance with two workers.

Counters are summed over workers: each worker renders its own live counters plus the
snapshots the others write once a second, so a total becomes exact only after the
next snapshot. Tests therefore poll with a deadline until the expected value shows
up; counting tests use a fresh appliance so that the expected value is exact.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable

import orjson
from prometheus_client.parser import text_string_to_metric_families

from tests.server.conftest import (
    MetricSamples,
    Site,
    evict_from_page_cache,
    http_request,
    open_socket,
    parse_metrics,
    read_responses,
    sample,
    wait_for,
)


def wait_for_sample(
    site: Site, name: str, want: float, listener: str = "http", **labels: str
) -> MetricSamples:
    return wait_for(
        lambda: site.metrics(listener),
        lambda m: sample(m, name, **labels) == want,
        what=f"{name}{labels} == {want}",
    )


def test_metrics_is_prometheus_text(site: Site) -> None:
    reply = site.request("/metrics")
    assert reply.status == 200
    assert reply.header("content-type").startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(reply.body.decode())}
    expected_types = {
        "oca_http_requests": "counter",
        "oca_sent_bytes": "counter",
        "oca_send_method_bytes": "counter",
        "oca_http_request_duration_seconds": "histogram",
        "oca_open_connections": "gauge",
        "oca_disk_up": "gauge",
        "oca_workers": "gauge",
    }
    for name, kind in expected_types.items():
        assert name in families, name
        assert families[name].type == kind, name
    for name in families:
        assert name.startswith("oca_"), name
    head = site.request("/metrics", method="HEAD")
    assert head.status == 200 and head.body == b""


def test_both_workers_report(site: Site) -> None:
    wait_for_sample(site, "oca_workers", 2)


def test_disk_up_for_every_configured_disk(site: Site) -> None:
    m = site.metrics()
    disks = {
        (dict(labels)["tier"], os.path.basename(dict(labels)["disk"])): value
        for (name, labels), value in m.items()
        if name == "oca_disk_up"
    }
    assert disks == {("ssd", "ssd0"): 1.0, ("ssd", "ssd1"): 1.0, ("hdd", "hdd0"): 1.0}


def test_latency_histogram(site: Site) -> None:
    obj = site.content["/titles/tos/v720/init.mp4"]
    for _ in range(5):
        assert site.request(obj.path, {"Range": "bytes=0-0"}).status == 206
    m = wait_for(
        site.metrics,
        lambda m: sample(m, "oca_http_request_duration_seconds_count") >= 5,
        what="5 observed requests",
    )
    buckets = sorted(
        (float(dict(labels)["le"]), value)
        for (name, labels), value in m.items()
        if name == "oca_http_request_duration_seconds_bucket"
    )
    assert len(buckets) > 5
    assert buckets[-1][0] == float("inf")
    counts = [v for _, v in buckets]
    assert counts == sorted(counts)  # cumulative
    assert counts[-1] == sample(m, "oca_http_request_duration_seconds_count")
    assert sample(m, "oca_http_request_duration_seconds_sum") > 0


def test_healthz_and_readyz(site: Site) -> None:
    health = site.request("/healthz")
    assert health.status == 200
    assert health.header("content-type").startswith("application/json")
    assert orjson.loads(health.body)["status"] == "ok"
    ready = site.request("/readyz")
    assert ready.status == 200
    assert orjson.loads(ready.body)["ready"] is True
    for path in ("/healthz", "/readyz"):
        head = site.request(path, method="HEAD")
        assert head.status == 200 and head.body == b""


# --------------------------------------------------------------------------- counting


def test_206_counter_grows_by_the_number_of_range_requests(
    site_factory: Callable[..., Site],
) -> None:
    site = site_factory()
    before = sample(site.metrics(), "oca_http_requests_total", code="206")
    obj = site.content["/titles/tos/v1080.mp4"]
    n = 0
    # Several connections, so that both workers serve some of them.
    for c in range(6):
        conn = site.connection()
        for i in range(c + 3):
            reply = site.request(obj.path, {"Range": f"bytes={i}-{i + 10}"}, conn=conn)
            assert reply.status == 206
            n += 1
        conn.close()
    wait_for_sample(site, "oca_http_requests_total", before + n, code="206")
    assert site.request("/nope").status == 404
    wait_for_sample(site, "oca_http_requests_total", 1, code="404")


def test_sent_bytes_by_tier(site_factory: Callable[..., Site]) -> None:
    site = site_factory()
    ssd = site.content["/titles/tos/v1080.mp4"]
    hdd = site.content["/titles/sintel/v480/seg-00001.m4s"]
    assert (ssd.tier, hdd.tier) == ("ssd", "hdd")
    assert site.request(ssd.path).body == ssd.data
    assert site.request(hdd.path, {"Range": "bytes=100-199"}).status == 206
    assert site.request(hdd.path, method="HEAD").status == 200  # no body bytes
    wait_for(
        site.metrics,
        lambda m: (
            (
                sample(m, "oca_sent_bytes_total", tier="ssd"),
                sample(m, "oca_sent_bytes_total", tier="hdd"),
            )
            == (ssd.size, 100)
        ),
        what="sent bytes per tier",
    )


def test_send_method_sendfile_on_http_and_copy_on_https(
    site_factory: Callable[..., Site],
) -> None:
    site = site_factory()
    big = site.content["/titles/tos/v2160.webm"]
    small = site.content["/titles/tos/v720/seg-00002.m4s"]
    assert site.request(big.path).body == big.data
    assert site.request(small.path, {"Range": "bytes=0-99"}).status == 206
    wait_for_sample(site, "oca_send_method_bytes_total", big.size + 100, method="sendfile")
    m = site.metrics()
    assert sample(m, "oca_send_method_bytes_total", method="copy") == 0
    assert site.request(small.path, listener="https").body == small.data
    assert site.request(big.path, {"Range": "bytes=0-999999"}, listener="https").status == 206
    m = wait_for_sample(site, "oca_send_method_bytes_total", small.size + 1_000_000, method="copy")
    assert sample(m, "oca_send_method_bytes_total", method="sendfile") == big.size + 100


def test_open_connections_gauge(site_factory: Callable[..., Site]) -> None:
    site = site_factory()
    socks = [open_socket(site) for _ in range(5)]
    try:
        for s in socks:  # a request on each proves the server accepted it
            s.sendall(http_request("/titles/tos/manifest.mpd"))
            ((status, _, _),) = read_responses(s, 1)
            assert status == 200
        # The five idle keep-alive connections plus the one asking for /metrics.
        wait_for_sample(site, "oca_open_connections", 6)
    finally:
        for s in socks:
            s.close()
    wait_for_sample(site, "oca_open_connections", 1)


def test_failed_disk_is_reported(site_factory: Callable[..., Site]) -> None:
    site = site_factory()
    root = site.appliance.disk_paths("hdd")[0]
    labels = {"tier": "hdd", "disk": str(root)}
    wait_for_sample(site, "oca_disk_up", 1, **labels)
    gone = root.with_name(root.name + ".gone")
    os.rename(root, gone)
    try:
        wait_for_sample(site, "oca_disk_up", 0, **labels)
        # Each worker noticed it and counts one failure.
        wait_for_sample(site, "oca_disk_failures_total", 2, tier="hdd")
        hdd_obj = site.content["/titles/sintel/v480/init.mp4"]
        assert site.request(hdd_obj.path).status in (404, 503)
        # The other disks keep the appliance ready and serving.
        ready = site.request("/readyz")
        assert ready.status == 200
        obj = site.content["/titles/tos/v720/init.mp4"]
        assert site.request(obj.path).body == obj.data
    finally:
        os.rename(gone, root)
    wait_for_sample(site, "oca_disk_up", 1, **labels)


# --------------------------------------------------------------------------- internal


def test_internal_endpoints_move_to_the_internal_listener(
    site_factory: Callable[..., Site],
) -> None:
    site = site_factory(internal=True)
    assert "internal" in site.appliance.urls
    for path in ("/metrics", "/healthz", "/readyz"):
        assert site.request(path, listener="internal").status == 200, path
        assert site.request(path, listener="http").status == 404, path
        assert site.request(path, listener="https").status == 404, path
        assert site.request(path, method="HEAD", listener="http").status == 404, path
    # Content is still served on the content listeners.
    obj = site.content["/titles/tos/manifest.mpd"]
    assert site.request(obj.path).body == obj.data
    parse_metrics(site.request("/metrics", listener="internal").body.decode())


def test_internal_metrics_count_content_requests(site_factory: Callable[..., Site]) -> None:
    site = site_factory(internal=True)
    obj = site.content["/titles/tos/v720/init.mp4"]
    for i in range(7):
        assert site.request(obj.path, {"Range": f"bytes={i}-{i}"}).status == 206
    wait_for_sample(site, "oca_http_requests_total", 7, listener="internal", code="206")


def test_counters_never_go_backwards_between_scrapes(site_factory: Callable[..., Site]) -> None:
    """Prometheus reads any decrease of a counter as a reset and then counts the whole
    value again, so two scrapes answered by different workers must agree on order."""
    site = site_factory()
    obj = site.content["/titles/tos/v720/init.mp4"]
    names = [
        ("oca_http_requests_total", {"code": "206"}),
        ("oca_sent_bytes_total", {"tier": "ssd"}),
    ]
    seen: list[tuple[float, ...]] = []
    for round_ in range(40):
        conn = site.connection()  # a new connection: the kernel picks a worker
        for i in range(3):
            reply = site.request(obj.path, {"Range": f"bytes={i}-{i + round_}"}, conn=conn)
            assert reply.status == 206
        conn.close()
        m = site.metrics()
        seen.append(tuple(sample(m, name, **labels) for name, labels in names))
    for column in range(len(names)):
        values = [s[column] for s in seen]
        drops = [(i, a, b) for i, (a, b) in enumerate(itertools.pairwise(values)) if b < a]
        assert not drops, f"{names[column]} went backwards: {drops[:5]}"


def test_cold_reads_are_counted(site_factory: Callable[..., Site]) -> None:
    site = site_factory()
    obj = site.content["/titles/sintel/v480/seg-00001.m4s"]
    assert evict_from_page_cache(site, obj) == 1
    assert site.request(obj.path).body == obj.data
    m = wait_for(
        site.metrics,
        lambda m: sample(m, "oca_cold_reads_total", tier="hdd") >= 1,
        what="a cold read on hdd over HTTP",
    )
    before = sample(m, "oca_cold_reads_total", tier="hdd")
    assert evict_from_page_cache(site, obj) == 1
    assert site.request(obj.path, listener="https").body == obj.data
    wait_for(
        site.metrics,
        lambda m: sample(m, "oca_cold_reads_total", tier="hdd") > before,
        what="a cold read on hdd over HTTPS",
    )
