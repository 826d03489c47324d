"""The Prometheus expositions, linted by ``promtool check metrics``, and the Grafana
dashboard (docs/grafana/oca.json) checked against the names they really expose.

One small world, every part a real process on loopback: an origin holding the test
pattern title, the steering service with a catalog of it, appliance ``a1`` (URL tokens,
TLS, an internal listener for /metrics, a header timeout short enough to trip) that
heartbeats to the service, fills the title from the service's fill manifest and misses
to its peer ``a2`` and to the origin, and ``a2`` with two workers. The traffic sent
gives samples to the metric families (hits on two tiers, a range request, HTTPS, a 404
through the miss path, a peer hit, an origin fetch, refused tokens and peer requests, a
header timeout; heartbeats and every kind of steering answer), so promtool sees labelled
series and not only HELP/TYPE lines.

The dashboard is checked three ways: its structure (unique panel ids, a
``${DS_PROMETHEUS}`` data source and at least one query on every panel, the template
variables its queries use), its PromQL (each query, with Grafana's variables replaced,
parsed by ``promtool check rules``), and its metric names: every name a query reads
must be exposed by the running appliance (panels above the Steering row) or steering
service (the Steering row), histogram names as their ``_bucket``/``_sum``/``_count``.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from oca.auth.tokens import signed_path
from oca.health.heartbeat import sign_heartbeat
from oca.peering.peers import SUMMARY_PATH
from tests.appliance import Appliance, fetch, free_port, make_tls, wait_until, write_tree
from tests.peering.origin_proc import OriginProcess
from tests.steering.live import PATTERN, Steering, build_catalog, new_key, steering_section

REPO_ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = REPO_ROOT / "docs" / "grafana" / "oca.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (make system-deps: Debian's prometheus)"
)

KEY_ID = "k1"
PEER_OBJ = "/titles/peer/seg-00001.m4s"  # held by a2 only
ORIGIN_OBJ = "/titles/extra/seg-00001.m4s"  # at the origin only
HDD_OBJ = "/titles/archive/v1.mp4"  # imported onto a1's hdd tier
MISSING_OBJ = "/titles/pattern/no-such-segment.m4s"  # nowhere: a 404 through the miss path

#: Families that only get samples when something goes wrong that this world does not
#: provoke (a refused connection, a failed disk, a quarantined object, a fill source that
#: fails).
MAY_BE_EMPTY = frozenset(
    {
        "oca_connections_refused",
        "oca_disk_failures",
        "oca_objects_quarantined",
        "oca_fill_source_errors",
        "oca_cold_reads",  # only if the kernel really dropped the pages asked to drop
    }
)


@dataclass
class World:
    steering: Steering
    origin: OriginProcess
    a1: Appliance
    a2: Appliance
    key: bytes
    tls: ssl.SSLContext  # trusts the test CA only

    def metrics_url(self) -> str:
        return self.a1.urls["internal"] + "/metrics"

    def get(self, path: str, headers: dict[str, str] | None = None) -> int:
        host, port = self.a1.host_port
        return fetch(host, port, path, headers)[0]

    def signed(self, path: str) -> str:
        return signed_path(KEY_ID, self.key, path, int(time.time()) + 600)


def _get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200, url
        body: bytes = resp.read()
    return body.decode()


def _samples(text: str) -> dict[str, list[dict[str, str]]]:
    """Family name -> the label sets of its samples.

    prometheus-client's ``*_created`` companions (a family of their own in this text
    format, with a sample wherever the counter has one) are left out.
    """
    out: dict[str, list[dict[str, str]]] = {}
    for fam in text_string_to_metric_families(text):
        if not fam.name.endswith("_created"):
            out.setdefault(fam.name, []).extend(s.labels for s in fam.samples)
    return out


def exposed_names(text: str) -> set[str]:
    """Every series name a query can read: sample names, and for each declared family
    the names its type gives it (counter ``_total``, histogram ``_bucket/_sum/_count``),
    so a family without samples yet still counts as exposed."""
    names: set[str] = set()
    for fam in text_string_to_metric_families(text):
        names.update(s.name for s in fam.samples)
        if fam.type == "counter":
            names.add(f"{fam.name}_total")
        elif fam.type in ("histogram", "gaugehistogram"):
            names.update(f"{fam.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        elif fam.type == "summary":
            names.update((fam.name, f"{fam.name}_sum", f"{fam.name}_count"))
        else:
            names.add(fam.name)
    return names


def promtool_check_metrics(text: str) -> tuple[int, str]:
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    return done.returncode, (done.stdout + done.stderr).strip()


# --------------------------------------------------------------------------- the world


def _start_world(root: Path, started: list[Any]) -> World:
    """Start every process, appending each to ``started`` as soon as it runs (so that a
    failure half way still stops what did start)."""
    tree = root / "origin"
    shutil.copytree(PATTERN / "pattern", tree / "titles" / "pattern")
    write_tree(tree, {ORIGIN_OBJ: os.urandom(300_001)})
    origin = OriginProcess(tree)
    origin.start()
    started.append(origin)

    hb_key = new_key()
    steer_port = free_port()
    steering = Steering(
        root / "steering",
        heartbeat_keys={"hb": hb_key},
        listen=f"127.0.0.1:{steer_port}",
        extra='[[fill.boosts]]\ntitle = "pattern"\nrequests_per_day = 100000\n'
        "[ranking]\noverload_threshold = 50.0\n",
    )
    steering.root.mkdir(parents=True)
    catalog_src = root / "catalog-src"
    shutil.copytree(PATTERN / "pattern", catalog_src / "pattern")
    build_catalog(steering.catalog_path, catalog_src, origin.url)
    steering.start()
    started.append(steering)
    steer_url = f"http://127.0.0.1:{steer_port}"

    peer_key = new_key()
    ports = {"a1": free_port(), "a2": free_port()}

    def peering(me: str, other: str) -> str:
        return (
            f'[peering]\nappliance_id = "{me}"\nsite = "s1"\n'
            f'peers = ["http://127.0.0.1:{ports[other]}"]\nkeys = ["{peer_key}"]\n'
            "summary_refresh_seconds = 0.2\n"
        )

    url_key = new_key()
    cert_file, key_file, client_tls = make_tls(root)
    a1 = Appliance(
        root / "a1",
        workers=1,  # one worker: its view of the peer is the view every request gets
        keys={KEY_ID: url_key},
        tls_cert=(cert_file, key_file),
        internal=True,
        listen=f"127.0.0.1:{ports['a1']}",
        extra="header_timeout_seconds = 0.5",
        sections=peering("a1", "a2")
        + f'[miss]\norigins = ["{origin.url}"]\nnegative_ttl_seconds = 30\n'
        + steering_section([steer_url], "hb", hb_key, region="r1", prefixes=["10.1.0.0/16"])
        + f'[fill]\nmanifest = "{steer_url}/v1/fill/a1"\nwindow_jitter_seconds = 0\n',
    )
    a2 = Appliance(
        root / "a2",
        workers=2,
        listen=f"127.0.0.1:{ports['a2']}",
        sections=peering("a2", "a1") + "[miss]\nenabled = false\n",
    )
    for app in (a1, a2):
        app.root.mkdir(parents=True)
    a1.import_tree(write_tree(root / "a1-hdd", {HDD_OBJ: os.urandom(2_000_003)}), tier="hdd")
    a2.import_tree(write_tree(root / "a2-seed", {PEER_OBJ: os.urandom(400_009)}))
    for app in (a2, a1):
        started.append(app)  # before start: a start that times out leaves a process
        app.start()
    return World(steering, origin, a1, a2, bytes.fromhex(url_key), client_tls)


def _drop_from_page_cache(app: Appliance, path: str) -> None:
    for disk in app.disk_paths("hdd"):
        file = disk / "objects" / path.lstrip("/")
        if file.exists():
            fd = os.open(file, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _heartbeat(world: World, body: bytes, key: str) -> int:
    req = urllib.request.Request(
        world.steering.url + "/v1/heartbeat",
        data=body,
        method="POST",
        headers={"X-Oca-Heartbeat": sign_heartbeat("hb", bytes.fromhex(key), body)},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _traffic(world: World) -> None:
    steering, a1 = world.steering, world.a1
    pattern_files = len(list((PATTERN / "pattern").iterdir()))
    wait_until(lambda: "a1" in steering.fleet(), 20, "a1's first heartbeat at the service")

    # Nobody holds the title yet: the service answers 503 (an empty ranking).
    assert steering.request("/v1/titles/pattern/urls")[0] == 503
    done = a1.oca("fill", "-c", str(a1.config_path), "--now", check=False)
    assert done.returncode == 0, done.stderr[-3000:]

    def holds_the_title() -> bool:
        text = _get_text(world.metrics_url())
        objects = sum(
            float(line.split()[-1])
            for line in text.splitlines()
            if line.startswith("oca_store_objects{")
        )
        return objects >= pattern_files + 1  # the title and the hdd object

    wait_until(holds_the_title, 20, "a1 to see the filled title")
    wait_until(
        lambda: steering.fleet()["a1"]["objects"] >= pattern_files, 20, "the service sees it"
    )
    assert steering.request("/v1/titles/pattern/urls")[0] == 200
    assert steering.request("/v1/titles/pattern/manifest.mpd")[0] == 200
    assert steering.request("/v1/steering/pattern")[0] == 200
    assert steering.request("/v1/explain/pattern")[0] == 200
    nameless = orjson.dumps({"schema": "oca.heartbeat", "version": 1, "sent_at": time.time()})
    assert _heartbeat(world, nameless, new_key()) == 403  # forbidden: a signature of no key
    assert _heartbeat(world, nameless, steering.heartbeat_keys["hb"]) == 400  # malformed

    # The appliance: hits on both tiers, a range, HTTPS, misses, refusals, a timeout.
    mpd = "/titles/pattern/manifest.mpd"
    assert world.get(world.signed(mpd)) == 200
    segment = next(p.name for p in sorted((PATTERN / "pattern").iterdir()) if p.suffix == ".m4s")
    assert world.get(world.signed(f"/titles/pattern/{segment}"), {"Range": "bytes=0-99"}) == 206
    _drop_from_page_cache(a1, HDD_OBJ)
    assert world.get(world.signed(HDD_OBJ), {"Range": "bytes=1000000-1999999"}) == 206
    host, port = a1.urls["https"].split("://", 1)[1].rsplit(":", 1)
    conn = http.client.HTTPSConnection(host, int(port), timeout=10, context=world.tls)
    try:
        conn.request("GET", world.signed(mpd))
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read()
    finally:
        conn.close()
    assert world.get(world.signed(MISSING_OBJ)) == 404
    wait_until(
        lambda: 'oca_peer_up{peer="a2"} 1.0' in _get_text(world.metrics_url()),
        20,
        "a1 to hold a fresh summary of a2",
    )
    assert world.get(world.signed(PEER_OBJ)) == 200
    assert world.get(world.signed(ORIGIN_OBJ)) == 200
    assert world.get(mpd) == 403  # no token
    assert world.get(SUMMARY_PATH) == 403  # a peer request without the peer header
    with socket.create_connection(a1.host_port, timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\n")  # and nothing more: the header timeout closes it
        while s.recv(65536):  # until the appliance closes (a socket timeout fails the test)
            pass

    def counted() -> bool:
        samples = _samples(_get_text(world.metrics_url()))
        want = {
            "oca_http_requests": {"code": "404"},
            "oca_peer_requests": {"result": "ok"},
            "oca_origin_requests": {"result": "ok"},
            "oca_timeouts": {"kind": "header"},
            "oca_send_method_bytes": {"method": "copy"},
        }
        return all(labels in samples.get(name, []) for name, labels in want.items())

    wait_until(counted, 20, "the requests in a1's counters")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("promtool")
    started: list[Any] = []
    try:
        w = _start_world(root, started)
        _traffic(w)
        yield w
    finally:
        for proc in reversed(started):
            proc.stop()


@pytest.fixture(scope="module")
def expositions(world: World) -> dict[str, str]:
    """Every exposition of the world, by where it came from."""
    a1, a2 = world.a1, world.a2
    return {
        "appliance /metrics (internal listener)": _get_text(world.metrics_url()),
        "appliance /metrics (content listener, two workers)": _get_text(a2.url + "/metrics"),
        "steering /metrics": _get_text(world.steering.url + "/metrics"),
        "fill metrics.d/fill.prom": (a1.root / "state" / "metrics.d" / "fill.prom").read_text(),
    }


# --------------------------------------------------------------------------- promtool


@needs_promtool
def test_promtool_reports_problems_it_is_given() -> None:
    """The check below is only worth something if promtool complains about bad names."""
    bad = "# HELP x_count Requests.\n# TYPE x_count counter\nx_count 1\n"
    code, output = promtool_check_metrics(bad)
    assert code != 0
    assert '"_total" suffix' in output


@needs_promtool
def test_every_exposition_passes_promtool(expositions: dict[str, str]) -> None:
    problems = {}
    for source, text in expositions.items():
        assert "# TYPE" in text, source
        code, output = promtool_check_metrics(text)
        if code != 0 or output:
            problems[source] = f"exit {code}:\n{output}"
    assert not problems, problems


@needs_promtool
def test_the_traffic_gave_every_family_samples(expositions: dict[str, str]) -> None:
    """So that promtool saw labelled series, not just the HELP and TYPE lines."""
    empty = []
    for source, text in expositions.items():
        if "two workers" in source:  # a2 only answers a1's peer requests
            continue
        for name, labels in _samples(text).items():
            if not labels and name not in MAY_BE_EMPTY:
                empty.append(f"{source}: {name}")
    assert not empty, empty


# --------------------------------------------------------------------------- the dashboard

#: PromQL functions, aggregation operators and keywords: never metric names.
_PROMQL_WORDS_TEXT = """
    abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time ceil changes
    clamp clamp_max clamp_min cos cosh count_over_time day_of_month day_of_week day_of_year
    days_in_month deg delta deriv exp floor histogram_count histogram_fraction
    histogram_quantile histogram_sum holt_winters hour idelta increase irate label_join
    label_replace last_over_time ln log10 log2 mad_over_time max_over_time min_over_time
    minute month pi predict_linear present_over_time quantile_over_time rad rate resets round
    scalar sgn sin sinh sort sort_desc sqrt stddev_over_time stdvar_over_time sum_over_time
    tan tanh time timestamp vector year
    sum min max avg group stddev stdvar count count_values bottomk topk quantile
    by without on ignoring group_left group_right bool offset and or unless atan2 inf nan
"""
PROMQL_WORDS = frozenset(_PROMQL_WORDS_TEXT.split())
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_LABEL_LISTS = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)")
_NUMBER_UNIT = re.compile(r"\b\d+(?:\.\d+)?(?:e[+-]?\d+)?")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads.

    Strings (label values, label_replace arguments, Grafana variables inside them),
    label matchers, range and subquery brackets and the label lists of ``by``/``on``/...
    are cut out; what is left that is an identifier and not a function, operator or
    keyword is a metric name.
    """
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("{}", text)
    text = _BRACKETS.sub("[]", text)
    text = _LABEL_LISTS.sub(r"\1", text)
    text = _NUMBER_UNIT.sub("0", text)
    return {m for m in _IDENT.findall(text) if m.lower() not in PROMQL_WORDS}


def test_metric_name_extraction() -> None:
    expr = (
        'sum by (class) (label_replace(rate(oca_http_requests_total{instance=~"$i",code!="x"}'
        '[$__rate_interval]), "class", "${1}xx", "code", "(.).*")) / ignoring (tier) '
        "group_left sum(oca_sent_bytes_total offset 5m) + histogram_quantile(0.99, "
        "sum by (le) (rate(oca_x_seconds_bucket[5m:1m]))) * 8 > bool 1e3 and oca_workers"
    )
    assert metric_names(expr) == {
        "oca_http_requests_total",
        "oca_sent_bytes_total",
        "oca_x_seconds_bucket",
        "oca_workers",
    }


def _dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def _panels(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(title of the row it sits under, panel) for every panel, rows included."""
    row = ""
    for panel in doc["panels"]:
        if panel["type"] == "row":
            row = panel["title"]
            yield row, panel
            yield from ((row, p) for p in panel.get("panels", []))  # collapsed rows
        else:
            yield row, panel


def _queries(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], str]]:
    for row, panel in _panels(doc):
        for target in panel.get("targets", []):
            yield row, panel, target["expr"]


def test_dashboard_structure() -> None:
    doc = _dashboard()
    assert 36 <= doc["schemaVersion"] <= 41
    assert [i["name"] for i in doc["__inputs"]] == ["DS_PROMETHEUS"]
    assert doc["__inputs"][0]["pluginId"] == "prometheus"
    variables = {v["name"] for v in doc["templating"]["list"]}
    assert {"instance", "steering"} <= variables
    ids = [p["id"] for _, p in _panels(doc)]
    assert len(ids) == len(set(ids)), sorted(ids)
    rows = [p["title"] for _, p in _panels(doc) if p["type"] == "row"]
    assert rows[-1] == "Steering" and all(r.startswith("Appliance") for r in rows[:-1])
    datasource = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    used_variables: set[str] = set()
    for _, panel in _panels(doc):
        if panel["type"] == "row":
            continue
        where = f"panel {panel['id']} ({panel['title']})"
        assert panel.get("datasource") == datasource, where
        assert panel.get("targets"), where
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, where
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), where
        for target in panel["targets"]:
            assert target.get("datasource", datasource) == datasource, where
            assert target["expr"].strip(), where
            used_variables.update(re.findall(r"\$(\w+)", target["expr"]))
    used_variables -= {"__rate_interval", "__interval", "__range"}
    assert used_variables <= variables, used_variables - variables


@needs_promtool
def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """Every query, with Grafana's variables filled in, is PromQL promtool accepts."""
    rules = []
    for i, (_, panel, expr) in enumerate(_queries(_dashboard())):
        filled = expr.replace("$__rate_interval", "5m").replace("$instance", ".*")
        filled = filled.replace("$steering", ".*")
        rules.append({"record": f"dashboard:panel_{panel['id']}:query_{i}", "expr": filled})
    assert rules
    path = tmp_path / "dashboard.rules.json"  # YAML is a superset of JSON
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_dashboard_reads_only_exposed_metrics(expositions: dict[str, str]) -> None:
    appliance = exposed_names(expositions["appliance /metrics (internal listener)"])
    steering = exposed_names(expositions["steering /metrics"])
    assert "oca_fill_bytes_total" in appliance  # the fill's text file, through /metrics
    missing = []
    read: set[str] = set()
    for row, panel, expr in _queries(_dashboard()):
        names = metric_names(expr)
        assert names, f"no metric name found in {expr!r}"
        read |= names
        exposed = steering if row == "Steering" else appliance
        missing += [f"{row} / {panel['title']}: {n}" for n in sorted(names - exposed)]
    assert not missing, missing
    # Sanity: the extraction found the names the panels are about.
    for name in (
        "oca_sent_bytes_total",
        "oca_http_request_duration_seconds_bucket",
        "oca_fill_remaining_bytes",
        "oca_steering_decision_seconds_bucket",
        "oca_steering_appliances",
    ):
        assert name in read, name
