"""The pure parts of heartbeat reporting: wire format, signature, inventory deltas,
request counts, the health verdict, the grace policy, prefixes and config checks."""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oca.config import load_config
from oca.errors import ConfigError
from oca.health.contact import ContactTracker
from oca.health.heartbeat import (
    HeartbeatAuthError,
    Identity,
    build_heartbeat,
    encode_heartbeat,
    parse_reply,
    sign_heartbeat,
    verify_heartbeat,
)
from oca.health.inventory import (
    InventoryLog,
    ReplicaBase,
    acknowledged,
    inventory_payload,
    request_counts,
)
from oca.health.load import load_fraction
from oca.health.routes import merge_prefixes, protocol_number, route_prefixes
from oca.health.verdict import DiskHealth, FillHealth, WorkerHealth, evaluate

SECRET = bytes.fromhex("11" * 32)
IDENT = Identity("oca-a1", "ix-fra", "eu-central", 50.1, 8.7, ("http://10.1.0.1:8080",), ())


def disk(path: str, state: str = "ok", reason: str = "") -> DiskHealth:
    return DiskHealth("ssd", path, state, reason, 1000, 10, 1)  # type: ignore[arg-type]


ALL_UP = WorkerHealth(2, 2)
IDLE = FillHealth("idle", None)


# --------------------------------------------------------------------------- wire


def test_heartbeat_document_follows_the_wire_format() -> None:
    verdict = evaluate([disk("/d0"), disk("/d1", "failed", "EIO")], ALL_UP, IDLE)
    doc = build_heartbeat(
        identity=IDENT,
        boot_id="b00t",
        seq=3,
        sent_at=1795000000.5,
        interval_seconds=2.0,
        prefixes=["10.1.0.0/24"],
        health=verdict.to_json(),
        load={
            "nic_bits_per_second": 1e9,
            "link_capacity_bits_per_second": 1e10,
            "cpu_fraction": 0.3,
            "connections": 12,
            "load_fraction": 0.3,
        },
        inventory=None,
        requests={"/a": 2},
    )
    back = orjson.loads(encode_heartbeat(doc))
    assert set(back) == {
        "schema", "version", "appliance", "boot_id", "seq", "sent_at", "interval_seconds",
        "prefixes", "health", "load", "capacity_bytes", "used_bytes", "inventory", "requests",
    }  # fmt: skip
    assert (back["schema"], back["version"]) == ("oca.heartbeat", 1)
    assert back["appliance"] == {
        "id": "oca-a1", "site": "ix-fra", "region": "eu-central", "lat": 50.1, "lon": 8.7,
        "urls": ["http://10.1.0.1:8080"], "https_urls": [],
    }  # fmt: skip
    # Capacity and use count the healthy disks only.
    assert (back["capacity_bytes"], back["used_bytes"]) == (1000, 10)
    assert back["health"]["state"] == "degraded"
    assert back["health"]["disks"][1] == {
        "tier": "ssd", "path": "/d1", "state": "failed", "reason": "EIO",
        "capacity_bytes": 1000, "used_bytes": 10,
    }  # fmt: skip
    assert back["health"]["workers"] == {"configured": 2, "running": 2, "restarts": 0}


def test_signature_is_hmac_sha256_base64url_of_the_body() -> None:
    body = b'{"schema":"oca.heartbeat"}'
    value = sign_heartbeat("hb1", SECRET, body)
    mac = hmac.new(SECRET, body, hashlib.sha256).digest()
    assert value == "hb1:" + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    assert verify_heartbeat(value, body, {"hb1": SECRET, "old": b"x" * 32}) == "hb1"
    with pytest.raises(HeartbeatAuthError) as e:
        verify_heartbeat(value, body + b" ", {"hb1": SECRET})
    assert e.value.reason == "bad-signature"
    with pytest.raises(HeartbeatAuthError) as e:
        verify_heartbeat(value, body, {"other": SECRET})
    assert e.value.reason == "unknown-key"
    for bad in ("hb1", "hb1:", ":" + value.split(":")[1], "hb1:" + "!" * 43):
        with pytest.raises(HeartbeatAuthError) as e:
            verify_heartbeat(bad, body, {"hb1": SECRET})
        assert e.value.reason == "malformed"


def test_replies() -> None:
    assert parse_reply(200, b'{"ok": true, "inventory": "ok"}').ok
    r = parse_reply(200, b'{"ok": true, "inventory": "send-full"}')
    assert r.ok and r.send_full
    r = parse_reply(403, b'{"ok": false, "error": "bad signature"}')
    assert not r.ok and r.reason == "HTTP 403: bad signature"
    r = parse_reply(400, b'{"ok": false, "error": "health.state: unknown"}')
    assert r.reason == "HTTP 400: health.state: unknown"
    assert not parse_reply(200, b"<html>").ok
    assert not parse_reply(200, b'{"ok": true, "inventory": "maybe"}').ok
    assert parse_reply(502, b"Bad Gateway").reason == "HTTP 502: Bad Gateway"


# --------------------------------------------------------------------------- inventory


def test_full_first_then_nothing_then_deltas() -> None:
    log = InventoryLog("ep")
    assert log.update(frozenset({"/b", "/a"}))
    v1 = log.current
    full = inventory_payload(v1, None, need_full=False)
    assert full == {"kind": "full", "epoch": "ep", "gen": 1, "objects": ["/a", "/b"]}
    base = acknowledged(None, v1, full)
    assert inventory_payload(v1, base, need_full=False) is None
    assert not log.update(frozenset({"/a", "/b"}))  # same set: same generation
    assert log.update(frozenset({"/a", "/c"}))
    v2 = log.current
    delta = inventory_payload(v2, base, need_full=False)
    assert delta == {
        "kind": "delta", "epoch": "ep", "base_gen": 1, "gen": 2, "added": ["/c"],
        "removed": ["/b"],
    }  # fmt: skip
    # Asked for a full list: full, whatever the base.
    again = inventory_payload(v2, base, need_full=True)
    assert again is not None and again["kind"] == "full"
    # Unacknowledged (failed) heartbeats leave the base: the next delta folds both.
    assert log.update(frozenset({"/a", "/c", "/d"}))
    folded = inventory_payload(log.current, base, need_full=False)
    assert folded is not None and folded["kind"] == "delta"
    assert (folded["base_gen"], folded["added"], folded["removed"]) == (1, ["/c", "/d"], ["/b"])


def test_delta_longer_than_the_list_and_other_epochs_send_the_list() -> None:
    log = InventoryLog("ep")
    log.update(frozenset({f"/{i}" for i in range(10)}))
    base = ReplicaBase(log.current)
    log.update(frozenset({"/x"}))
    p = inventory_payload(log.current, base, need_full=False)
    assert p is not None and p["kind"] == "full"
    other = InventoryLog("another-boot")
    other.update(frozenset({"/x"}))
    p = inventory_payload(other.current, ReplicaBase(log.current), need_full=False)
    assert p is not None and p["kind"] == "full" and p["epoch"] == "another-boot"


paths = st.frozensets(st.sampled_from([f"/t/{i}" for i in range(40)]), max_size=40)


@settings(max_examples=200, deadline=None)
@given(st.lists(paths, min_size=1, max_size=8), st.lists(st.booleans(), min_size=8, max_size=8))
def test_receiver_applying_payloads_always_holds_the_current_set(
    sets: list[frozenset[str]], acks: list[bool]
) -> None:
    """Whatever heartbeats fail (ack False: not acknowledged), a receiver that applies
    what it gets, and asks for a full list when a delta's base is not its own, ends
    up with exactly the appliance's set."""
    log = InventoryLog("ep")
    base: ReplicaBase | None = None
    need_full = False
    held: tuple[int, set[str]] | None = None  # the receiver's (gen, set)
    for i, s in enumerate([*sets, sets[-1]]):
        log.update(s)
        p = inventory_payload(log.current, base, need_full=need_full)
        delivered = acks[i % len(acks)] or i == len(sets)  # the last one gets through
        if not delivered:
            continue
        if p is None:
            answer = "ok" if held is not None else "send-full"
        elif p["kind"] == "full":
            held, answer = (p["gen"], set(p["objects"])), "ok"
        elif held is None or held[0] != p["base_gen"]:
            answer = "send-full"
        else:
            held = (p["gen"], (held[1] - set(p["removed"])) | set(p["added"]))
            answer = "ok"
        if answer == "send-full":
            need_full = True
            p = inventory_payload(log.current, base, need_full=True)  # sent at once
            assert p is not None and p["kind"] == "full"
            held, answer = (p["gen"], set(p["objects"])), "ok"
        base = acknowledged(base, log.current, p)
        need_full = False
    assert held is not None and held[1] == set(sets[-1])


def test_request_counts() -> None:
    counts, marks = request_counts(None, {"/a": 5, "/b": 0})
    assert counts == {} and marks == {"/a": 5, "/b": 0}  # the first look is a baseline
    counts, marks = request_counts(marks, {"/a": 8, "/b": 0, "/new": 2})
    assert counts == {"/a": 3, "/new": 2}  # a new object counts from zero
    # A tier move: the record on the new disk starts at 0, then gets the total back.
    counts, marks = request_counts(marks, {"/a": 0, "/b": 0, "/new": 2})
    assert counts == {} and marks["/a"] == 8
    counts, marks = request_counts(marks, {"/a": 8, "/b": 1, "/new": 2})
    assert counts == {"/b": 1}
    counts, marks = request_counts(marks, {"/a": 10, "/new": 2})
    assert counts == {"/a": 2} and "/b" not in marks  # removed: forgotten
    # A disk coming back brings old totals: baseline, not requests.
    counts, marks = request_counts(marks, {"/a": 10, "/new": 2, "/old": 700}, {"/old"})
    assert counts == {} and marks["/old"] == 700


# --------------------------------------------------------------------------- verdict


def test_verdicts_carry_a_reason_for_every_problem() -> None:
    v = evaluate([disk("/d0")], ALL_UP, IDLE)
    assert (v.state, v.reasons, v.serving, v.draining) == ("healthy", (), True, False)
    v = evaluate([disk("/d0"), disk("/d1", "failed", "/d1: Input/output error (EIO)")],
                 ALL_UP, IDLE)  # fmt: skip
    assert v.state == "degraded"
    assert v.reasons == ("disk ssd:/d1 failed: /d1: Input/output error (EIO)",)
    v = evaluate([disk("/d0", "failed", "gone")], ALL_UP, IDLE)
    assert v.state == "unhealthy" and v.reasons[-1] == "no healthy disk (all 1 failed)"
    v = evaluate([disk("/d0")], WorkerHealth(4, 3, 1, 2), IDLE)
    assert v.state == "degraded" and v.reasons == (
        "3 of 4 workers serving (2 restarts, 1 starting)",
    )
    v = evaluate([disk("/d0")], WorkerHealth(2, 0, 2), IDLE)
    assert v.state == "unhealthy" and v.reasons == ("no worker is serving (0 of 2; 2 starting)",)
    v = evaluate([disk("/d0")], ALL_UP, IDLE, problems=["client prefixes from routes: EPERM"])
    assert v.state == "degraded" and v.reasons == ("client prefixes from routes: EPERM",)
    # Draining is a flag, not a problem; refusing and stopping say why serving is off.
    v = evaluate([disk("/d0")], ALL_UP, IDLE, draining=True)
    assert (v.state, v.reasons, v.draining, v.serving) == ("healthy", (), True, True)
    v = evaluate([disk("/d0")], ALL_UP, IDLE, refusing="steering unreachable for 700 s")
    assert (v.state, v.serving, v.reasons) == (
        "healthy",
        False,
        ("steering unreachable for 700 s",),
    )
    v = evaluate([disk("/d0")], ALL_UP, IDLE, stopping=True)
    assert not v.serving and v.reasons[0].startswith("shutting down")
    # A fill problem is the fill's reason, not the box's.
    v = evaluate([disk("/d0")], ALL_UP, FillHealth("idle", 5.0, "the last fill stopped"))
    assert v.state == "healthy" and v.to_json()["fill"]["reason"] == "the last fill stopped"


# --------------------------------------------------------------------------- contact


def test_grace_policy_stop() -> None:
    t = ContactTracker(600, "stop", started_at=0.0)
    assert t.observe(True, 1.0) is None  # first contact: nothing to say
    assert t.observe(None, 100.0) is None
    lost = t.observe(False, 102.0, "http://s1: HTTP 503")
    assert lost is not None and lost.kind == "lost" and not lost.refusing
    assert "since 1970-01-01T00:00:01Z (101.0 s ago): http://s1: HTTP 503" in lost.message
    assert "grace period of 600 s, then policy=stop" in lost.message
    assert t.observe(False, 300.0) is None and t.observe(None, 600.9) is None
    assert not t.refusing and t.refusal_reason(600.0) is None
    over = t.observe(None, 601.0)
    assert over is not None and over.kind == "grace-over" and over.refusing
    assert over.message == (
        "steering unreachable for 600.0 s; grace period over; "
        "policy=stop: refusing new content requests"
    )
    reason = t.refusal_reason(700.0)  # (refusing now: over.refusing said so)
    assert reason is not None and "refusing new content requests" in reason
    assert t.observe(False, 700.0) is None and t.observe(None, 800.0) is None
    back = t.observe(True, 900.0, "via http://s1")
    assert back is not None and back.kind == "recovered" and not back.refusing
    assert back.message == (
        "steering reachable again (via http://s1) after 899.0 s without contact; "
        "serving content again"
    )
    assert not t.refusing and t.state == "up"


def test_grace_policy_serve_and_zero_grace() -> None:
    t = ContactTracker(10, "serve", started_at=0.0)
    lost = t.observe(False, 3.0)
    assert lost is not None and "since the start" in lost.message
    over = t.observe(None, 10.0)
    assert (
        over is not None
        and not over.refusing
        and over.message.endswith("policy=serve: keep serving")
    )
    assert not t.refusing
    back = t.observe(True, 11.0)
    assert back is not None and "serving content again" not in back.message
    z = ContactTracker(0, "stop", started_at=0.0)
    both = z.observe(False, 0.0)
    assert both is not None and both.kind == "grace-over" and both.refusing
    assert "steering unreachable: no steering URL answered" in both.message
    assert "policy=stop: refusing new content requests" in both.message


# --------------------------------------------------------------------------- load, routes


def test_load_fraction() -> None:
    assert load_fraction(5e9, 1e10, 0.2) == 0.5
    assert load_fraction(1e9, 1e10, 0.7) == 0.7
    assert load_fraction(5e9, 0, 0.2) == 0.2  # capacity unknown: CPU only


def test_route_rows_and_merging() -> None:
    rows = [
        ("10.77.0.0", 16, 100, 12, 1),
        ("10.77.0.0", 16, 100, 186, 1),  # the same prefix from another daemon
        ("10.78.0.0", 16, 100, 4, 1),
        ("10.90.0.0", 16, 101, 12, 1),
        ("", 0, 100, 12, 1),  # default route
        ("10.66.0.0", 16, 100, 12, 6),  # blackhole
        ("2001:db8::", 32, 100, 12, 1),
    ]
    got = route_prefixes(rows, 100, frozenset({12, 186}))
    assert [str(n) for n in got] == ["10.77.0.0/16", "2001:db8::/32"]
    assert merge_prefixes(["2001:db8::/32", "10.1.0.0/24"], got, ["10.1.0.0/25"]) == [
        "10.1.0.0/24", "10.1.0.0/25", "10.77.0.0/16", "2001:db8::/32",
    ]  # fmt: skip
    assert protocol_number("bird") == 12 and protocol_number("BGP") == 186
    assert protocol_number(186) == 186 and protocol_number("42") == 42
    for bad in ("quagga-ish", 256, -1, True):
        with pytest.raises(ValueError):
            protocol_number(bad)


# --------------------------------------------------------------------------- config


def _config(tmp_path: Path, steering: str) -> Path:
    p = tmp_path / "oca.toml"
    p.write_text(
        '[server]\nlisten = ["127.0.0.1:0"]\n[[storage.tiers]]\nname = "ssd"\n'
        f'paths = ["{tmp_path}/d0"]\n[steering]\n{steering}\n'
    )
    return p


KEY = f'keys = [{{ id = "hb1", secret = "{"ab" * 32}" }}]'


def test_steering_config_defaults_and_values(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path, ""), env={})
    s = cfg.steering
    assert (s.urls, s.interval_seconds, s.grace_seconds, s.unreachable_policy) == (
        (), 2.0, 600.0, "serve",
    )  # fmt: skip
    assert (s.latitude, s.longitude, s.routes_table, s.interfaces) == (None, None, 0, ())
    cfg = load_config(
        _config(
            tmp_path,
            f'urls = ["http://steer:8090"]\n{KEY}\nlatitude = 50\nroutes_table = 100\n'
            'routes_protocols = ["bird", 186]\nunreachable_policy = "stop"',
        ),
        env={"OCA_STEERING__INTERFACES": "eth0,eth1"},
    )
    s = cfg.steering
    assert s.latitude == 50.0 and s.routes_protocols == ("bird", 186)
    assert s.interfaces == ("eth0", "eth1") and s.unreachable_policy == "stop"


@pytest.mark.parametrize(
    ("text", "key", "detail"),
    [
        ('urls = ["http://steer:8090"]', "steering.keys", "heartbeat key is required"),
        (f'urls = ["steer:8090"]\n{KEY}', "steering.urls[0]", "expected an http(s) URL"),
        ('prefixes = ["10.1.0.1/24"]', "steering.prefixes[0]", "has host bits set"),
        ('prefixes = ["nonsense"]', "steering.prefixes[0]", "nonsense"),
        ('routes_protocols = ["quagga-ish"]', "steering.routes_protocols[0]", "unknown route"),
        ("routes_protocols = [300]", "steering.routes_protocols[0]", "out of range"),
        ("latitude = 91", "steering.latitude", "must be <= 90"),
        ("interval_seconds = 0", "steering.interval_seconds", "must be >= 0.1"),
        ('unreachable_policy = "pause"', "steering.unreachable_policy", "must be one of"),
        ('routes_netns = "../x"', "steering.routes_netns", "not a namespace name"),
        ('keys = [{ id = "hb1", secret = "abcd" }]', "steering.keys[0].secret", "32 bytes"),
        ("grace = 5", "steering.grace", "unknown key"),
    ],
)
def test_steering_config_errors_name_the_key(
    tmp_path: Path, text: str, key: str, detail: str
) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(_config(tmp_path, text), env={})
    assert e.value.key == key and detail in e.value.detail, str(e.value)


def test_print_config_redacts_heartbeat_secrets(tmp_path: Path) -> None:
    from oca.config import config_to_dict

    cfg = load_config(_config(tmp_path, f'urls = ["http://steer:8090"]\n{KEY}'), env={})
    keys = list(config_to_dict(cfg)["steering"]["keys"])
    assert keys == [{"id": "hb1", "secret": "<redacted>"}]
