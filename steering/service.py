"""The steering service: an aiohttp application over the fleet, catalog and ranking.

Theory of operation
-------------------
Appliances POST heartbeats (:mod:`steering.fleet` validates and keeps them as soft
state); players, or the content provider's backend on their behalf, ask which
appliances to use. Every answer is computed from an immutable fleet *snapshot* taken
at request time, by the pure ranking (:mod:`steering.ranking`), so two replicas fed
the same heartbeats give the same answer and a restarted replica is whole again one
heartbeat interval later (sooner with the optional warm-start snapshot on disk).

Endpoints (JSON unless noted)::

    POST /v1/heartbeat                      appliance heartbeats (X-Oca-Heartbeat HMAC)
    GET  /v1/titles/{title}/urls            ranked, signed URLs (?path=, &explain=1)
    GET  /v1/titles/{title}/manifest.mpd    the title's MPD rewritten for this client
    GET  /v1/steering/{title}               DASH-IF / HLS content steering manifest
    GET  /v1/explain/{title}                the ranking with every reason
    GET  /v1/fill/{appliance}               the appliance's fill manifest
    GET  /v1/fleet                          every appliance's state and reasons
    GET  /v1/catalog, POST /v1/catalog/titles  list / add titles (admin networks)
    GET  /metrics, /healthz

The client is the connection's peer address, or, only when the peer is a configured
trusted proxy, the right-most address of ``X-Forwarded-For`` that is not itself a
trusted proxy (a ``client=`` query parameter is honoured from trusted proxies too).
"""

from __future__ import annotations

import asyncio
import base64
import gc
import hashlib
import hmac
import ipaddress
import logging
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import aiohttp
import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from steering import contentsteering
from steering.catalog import Catalog, CatalogError, Title, build_title_from_url
from steering.config import SteeringConfig, parse_listen
from steering.files import remove_temp_files
from steering.fillplan import ReplicaPolicy, SiteMember, SitePlan, manifest_from_plan, plan_site
from steering.fleet import Fleet, HeartbeatError, Snapshot
from steering.popularity import Boost as PopularityBoost
from steering.popularity import Popularity, PopularityError
from steering.ranking import Ranking, RankPolicy, rank
from steering.rewrite import rewrite_mpd
from steering.signing import Signer

log = logging.getLogger("oca.steering")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
HEARTBEAT_HEADER = "X-Oca-Heartbeat"
JSON = "application/json"
MPD_TYPE = "application/dash+xml"
# The temporary-file prefixes of the state saves (Fleet.save, Popularity.save).
STATE_TEMP_PREFIXES: Final = (".fleet-", ".popularity-")


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.heartbeats = Counter(
            "oca_steering_heartbeats", "Heartbeats received, by result", ["result"], registry=r
        )
        self.decisions = Counter(
            "oca_steering_decisions", "Ranking decisions served, by output", ["output"], registry=r
        )
        self.decision_seconds = Histogram(
            "oca_steering_decision_seconds",
            "Time to rank and answer one request",
            registry=r,
            buckets=(0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.25),
        )
        self.appliances = Gauge(
            "oca_steering_appliances", "Known appliances, by state", ["state"], registry=r
        )
        self.titles = Gauge("oca_steering_catalog_titles", "Titles in the catalog", registry=r)
        self.empty = Counter(
            "oca_steering_empty_rankings",
            "Requests no appliance could serve (answered 503)",
            registry=r,
        )


def _networks(items: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(n, strict=False) for n in items)


def _in(addr: IPAddress, nets: tuple[IPNetwork, ...]) -> bool:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr.version == n.version and addr in n for n in nets)


def _parse_ip(text: str) -> IPAddress | None:
    try:
        addr = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps({"error": message, **extra}), content_type=JSON
    )


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS),
        content_type=JSON,
        headers=headers,
    )


@dataclass
class SteeringService:
    """The service's state; handlers are its methods (see the module docstring)."""

    cfg: SteeringConfig
    catalog: Catalog
    clock: Callable[[], float] = time.time
    public_url: str = ""
    fleet: Fleet = field(init=False)
    popularity: Popularity = field(init=False)
    signer: Signer | None = field(init=False)
    metrics: _Metrics = field(init=False)
    _mpds: dict[str, tuple[str, bytes]] = field(init=False, default_factory=dict)
    _session: aiohttp.ClientSession | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        cfg = self.cfg
        self.fleet = Fleet(
            missed_heartbeats=cfg.heartbeat.missed_heartbeats,
            forget_after_seconds=cfg.heartbeat.forget_after_seconds,
        )
        self.popularity = self._new_popularity()
        self._plans: dict[tuple[str, int], tuple[float, SitePlan]] = {}
        self.signer = None
        if cfg.urls.keys:
            keys = {k.id: k.secret for k in cfg.urls.keys}
            self.signer = Signer(keys, cfg.urls.signing_key_id or cfg.urls.keys[0].id)
        self._heartbeat_keys = {k.id: bytes.fromhex(k.secret) for k in cfg.heartbeat.keys}
        self._trusted = _networks(cfg.service.trusted_proxies)
        self._admin = _networks(cfg.service.admin_networks)
        self.policy = RankPolicy(
            n=cfg.ranking.max_results,
            overload_threshold=cfg.ranking.overload_threshold,
            site_peering=cfg.ranking.site_peering,
            allow_miss=cfg.ranking.allow_miss,
        )
        self.metrics = _Metrics()

    def _new_popularity(self) -> Popularity:
        fill = self.cfg.fill
        pop = Popularity(
            fill.half_life_seconds,
            release_lead_seconds=fill.release_lead_seconds,
            release_requests_per_day=fill.release_requests_per_day,
        )
        pop.set_boosts(
            PopularityBoost(
                b.title,
                requests_per_day=b.requests_per_day,
                factor=b.factor,
                starts_at=b.starts_at or None,
                until=b.until or None,
                region=b.region or None,
            )
            for b in fill.boosts
        )
        return pop

    # ------------------------------------------------------------------ state
    @property
    def state_dir(self) -> Path:
        return Path(self.cfg.service.state_dir)

    @property
    def catalog_path(self) -> Path:
        return Path(self.cfg.service.catalog or self.state_dir / "catalog.json")

    def snapshot(self) -> Snapshot:
        return self.fleet.snapshot(self.clock(), self.catalog)

    def remove_state_temp_files(self) -> None:
        """Delete what a save of the state killed before its rename left behind (the
        temporary files of :meth:`save_state`, as large as the state itself)."""
        removed = remove_temp_files(str(self.state_dir), STATE_TEMP_PREFIXES)
        if removed:
            log.warning(
                "removed %d temporary state files left by a save that was cut short: %s",
                len(removed),
                ", ".join(removed),
            )

    def warm_start(self) -> None:
        """Load the fleet and popularity snapshots written by :meth:`save_state`."""
        now = self.clock()
        fleet_file = self.state_dir / "fleet.json"
        if fleet_file.exists():
            try:
                self.fleet.load(str(fleet_file), now)
                log.info("warm start: %d appliances from %s", len(self.fleet), fleet_file)
            except (OSError, ValueError) as exc:
                log.warning("warm start: ignoring %s: %s", fleet_file, exc)
        pop_file = self.state_dir / "popularity.json"
        if pop_file.exists():
            try:
                loaded = Popularity.load(str(pop_file))
                loaded.set_boosts(self.popularity.boosts)
                self.popularity = loaded
            except (OSError, ValueError) as exc:
                log.warning("warm start: ignoring %s: %s", pop_file, exc)

    def save_state(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.fleet.save(str(self.state_dir / "fleet.json"))
        self.popularity.save(str(self.state_dir / "popularity.json"))

    def reload_catalog(self) -> None:
        try:
            catalog = Catalog.load(str(self.catalog_path))
        except (OSError, CatalogError, ValueError) as exc:
            log.error("catalog %s not reloaded: %s", self.catalog_path, exc)
            return
        self.catalog = catalog
        self._mpds.clear()
        log.info("catalog %s: %d titles", self.catalog_path, len(catalog.titles))

    # ------------------------------------------------------------------ clients
    def client_of(self, request: web.Request) -> IPAddress | None:
        peer = _parse_ip(request.remote or "")
        if peer is None or not self._trusted or not _in(peer, self._trusted):
            return peer
        named = request.query.get("client")
        if named:
            return _parse_ip(named)
        chain = [a for a in request.headers.get("X-Forwarded-For", "").split(",") if a.strip()]
        for raw in reversed(chain):
            addr = _parse_ip(raw)
            if addr is None:
                return peer  # a malformed hop: trust nothing beyond the proxy
            if not _in(addr, self._trusted):
                return addr
        return peer

    def _token_client(self, client: IPAddress) -> str | None:
        mode = self.cfg.urls.bind_client
        if mode == "none":
            return None
        if mode == "address":
            return str(client)
        bits = 24 if client.version == 4 else 48
        return str(ipaddress.ip_network(f"{client}/{bits}", strict=False))

    def _signed_prefix(self, title: Title, client: IPAddress) -> tuple[str, int]:
        """``/t/<token>/titles/x/`` for ``title`` and this client, and its expiry: one
        token serves every appliance, so it is signed once per answer."""
        expires = int(self.clock()) + self.cfg.urls.token_ttl_seconds
        if self.signer is None:
            return quote(title.prefix), 0
        signed = self.signer.signed_prefix(title.prefix, expires, self._token_client(client))
        return signed, expires

    def _base_of(self, appliance: Any) -> str | None:
        urls = appliance.https_urls if self.cfg.urls.scheme == "https" else appliance.urls
        return urls[0] if urls else None

    # ------------------------------------------------------------------ ranking
    def _rank(
        self, request: web.Request, *, explain: bool = False
    ) -> tuple[Title, IPAddress, str | None, Ranking] | web.Response:
        title = self.catalog.get(request.match_info["title"])
        if title is None:
            return _error(404, f"unknown title {request.match_info['title']!r}")
        client = self.client_of(request)
        if client is None:
            return _error(400, "cannot determine the client address")
        path = request.query.get("path") or None
        if path is not None:
            found = self.catalog.lookup(path)
            if found is None or found[0].id != title.id:
                return _error(404, f"{path!r} is not an object of title {title.id!r}")
        ranking = rank(
            self.snapshot(),
            client,
            title=title.id,
            path=path,
            policy=self.policy,
            explain=explain,
        )
        return title, client, path, ranking

    def _empty(self, title: Title) -> web.Response:
        self.metrics.empty.inc()
        return _error(
            503,
            f"no appliance can serve {title.id!r} now",
            explain=f"{self.public_url}/v1/explain/{title.id}",
        )

    async def handle_urls(self, request: web.Request) -> web.Response:
        t0 = time.perf_counter()
        explain = request.query.get("explain") in ("1", "true", "yes")
        got = self._rank(request, explain=explain)
        if isinstance(got, web.Response):
            return got
        title, client, path, ranking = got
        urls = []
        signed, expires = self._signed_prefix(title, client)
        rest = quote(path[len(title.prefix) :]) if path else ""
        for choice in ranking.chosen:
            base = self._base_of(choice.appliance)
            if base is None:
                continue
            entry: dict[str, Any] = {
                "appliance": choice.appliance.id,
                "site": choice.appliance.site,
                "url": base.rstrip("/") + signed + rest,
                "token_expires": expires or None,
            }
            if explain:
                entry["reasons"] = list(choice.reasons)
            urls.append(entry)
        self.metrics.decisions.labels("urls").inc()
        self.metrics.decision_seconds.observe(time.perf_counter() - t0)
        body: dict[str, Any] = {"title": title.id, "client": str(client), "urls": urls}
        if path:
            body["path"] = path
        if explain:
            body["excluded"] = [
                {"appliance": e.appliance_id, "reason": e.reason} for e in ranking.excluded
            ]
        if not urls:
            self.metrics.empty.inc()
            return _json(body, status=503)
        return _json(body, headers={"Cache-Control": "no-store"})

    async def handle_explain(self, request: web.Request) -> web.Response:
        got = self._rank(request, explain=True)
        if isinstance(got, web.Response):
            return got
        title, client, path, ranking = got
        snap_time = self.clock()
        return _json(
            {
                "title": title.id,
                "client": str(client),
                "path": path,
                "taken_at": snap_time,
                "policy": {
                    "max_results": self.policy.n,
                    "overload_threshold": self.policy.overload_threshold,
                    "site_peering": self.policy.site_peering,
                    "allow_miss": self.policy.allow_miss,
                },
                "chosen": [
                    {
                        "rank": i + 1,
                        "appliance": c.appliance.id,
                        "site": c.appliance.site,
                        "region": c.appliance.region,
                        "load": c.appliance.load_fraction,
                        "reasons": list(c.reasons),
                    }
                    for i, c in enumerate(ranking.chosen)
                ],
                "excluded": [
                    {"appliance": e.appliance_id, "reason": e.reason} for e in ranking.excluded
                ],
            },
            headers={"Cache-Control": "no-store"},
        )

    async def _mpd_bytes(self, title: Title) -> bytes:
        """The title's original MPD, fetched from its origins once and checked against
        the catalog's sha256."""
        entry = self.catalog.lookup(title.mpd_path)
        want = entry[1].sha256 if entry else ""
        cached = self._mpds.get(title.id)
        if cached is not None and cached[0] == want:
            return cached[1]
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        errors = []
        for origin in title.origins:
            url = origin.rstrip("/") + title.mpd_path
            try:
                async with self._session.get(url) as resp:
                    if resp.status != 200:
                        errors.append(f"{url}: HTTP {resp.status}")
                        continue
                    data = await resp.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                errors.append(f"{url}: {exc or type(exc).__name__}")
                continue
            if want and hashlib.sha256(data).hexdigest() != want:
                errors.append(f"{url}: sha256 differs from the catalog")
                continue
            self._mpds[title.id] = (want, data)
            return data
        raise LookupError("; ".join(errors) or "the title has no origin")

    def _steering_url(self, title: Title, listed: Iterable[str]) -> str:
        return f"{self.public_url}/v1/steering/{title.id}?pathways={','.join(listed)}"

    async def handle_mpd(self, request: web.Request) -> web.Response:
        t0 = time.perf_counter()
        got = self._rank(request)
        if isinstance(got, web.Response):
            return got
        title, client, _, ranking = got
        bases = []
        signed, _ = self._signed_prefix(title, client)
        for choice in ranking.chosen:
            base = self._base_of(choice.appliance)
            if base is not None:
                bases.append((choice.appliance.id, base.rstrip("/") + signed))
        if not bases:
            return self._empty(title)
        try:
            original = await self._mpd_bytes(title)
        except LookupError as exc:
            return _error(502, f"cannot fetch the MPD of {title.id!r}: {exc}")
        body = rewrite_mpd(original, bases, self._steering_url(title, [loc for loc, _ in bases]))
        self.metrics.decisions.labels("mpd").inc()
        self.metrics.decision_seconds.observe(time.perf_counter() - t0)
        return web.Response(body=body, content_type=MPD_TYPE, headers={"Cache-Control": "no-store"})

    async def handle_steering(self, request: web.Request) -> web.Response:
        t0 = time.perf_counter()
        got = self._rank(request)
        if isinstance(got, web.Response):
            return got
        title, _, _, ranking = got
        threshold = self.policy.overload_threshold
        pathways = [
            contentsteering.Pathway(c.appliance.id, base, c.appliance.load_fraction >= threshold)
            for c in ranking.chosen
            if (base := self._base_of(c.appliance)) is not None
        ]
        listed = [p for p in request.query.get("pathways", "").split(",") if p]
        report = contentsteering.PlayerReport.from_query(request.query)
        reload_uri = self._steering_url(title, listed) if listed else None
        body = contentsteering.manifest(
            pathways,
            report,
            ttl_seconds=self.cfg.content_steering.ttl_seconds,
            reload_uri=reload_uri,
            min_throughput_bits=self.cfg.content_steering.min_throughput_bits,
            listed=listed,
        )
        self.metrics.decisions.labels("steering").inc()
        self.metrics.decision_seconds.observe(time.perf_counter() - t0)
        return _json(body, headers={"Cache-Control": "no-store"})

    # ------------------------------------------------------------------ appliances
    def _verify_heartbeat(self, request: web.Request, body: bytes) -> str | None:
        """None when the signature holds (or no keys are configured), else the reason."""
        if not self._heartbeat_keys:
            return None
        header = request.headers.get(HEARTBEAT_HEADER, "")
        key_id, sep, sig = header.partition(":")
        if not sep:
            return f"missing or malformed {HEARTBEAT_HEADER} header"
        secret = self._heartbeat_keys.get(key_id)
        if secret is None:
            return f"unknown key {key_id!r}"
        mac = hmac.new(secret, body, hashlib.sha256).digest()
        want = base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
        if not hmac.compare_digest(want, sig):
            return "bad signature"
        return None

    async def handle_heartbeat(self, request: web.Request) -> web.Response:
        limit = self.cfg.heartbeat.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            self.metrics.heartbeats.labels("too-large").inc()
            return _error(413, f"heartbeat larger than {limit} bytes")
        body = await request.read()
        reason = self._verify_heartbeat(request, body)
        if reason is not None:
            self.metrics.heartbeats.labels("forbidden").inc()
            log.warning("heartbeat from %s refused: %s", request.remote, reason)
            return _error(403, reason)
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            self.metrics.heartbeats.labels("malformed").inc()
            return _error(400, f"body is not JSON: {exc}")
        now = self.clock()
        if isinstance(payload, dict):
            sent = payload.get("sent_at")
            skew = self.cfg.heartbeat.max_clock_skew_seconds
            if isinstance(sent, int | float) and abs(now - float(sent)) > skew:
                self.metrics.heartbeats.labels("forbidden").inc()
                return _error(403, f"sent_at is {now - float(sent):+.0f} s from this clock")
        try:
            result = self.fleet.apply(payload, now)
        except HeartbeatError as exc:
            self.metrics.heartbeats.labels("malformed").inc()
            return _error(400, str(exc))
        inventory = payload.get("inventory") if isinstance(payload, dict) else None
        if isinstance(inventory, dict) and inventory.get("kind") == "full":
            # A full inventory is hundreds of thousands of long-lived objects; left to
            # the cyclic collector, each full collection would walk them all (seconds
            # with a 1,000-appliance fleet), stalling every answer meanwhile.
            gc.freeze()
        # a retried heartbeat (same boot, old seq) brings no counts: never count twice
        self._record_requests(result.region, dict(result.requests))
        self.metrics.heartbeats.labels("ok").inc()
        return _json({"ok": True, "inventory": result.inventory})

    def _site_members(self, snap: Snapshot, site: str) -> list[SiteMember]:
        return [
            SiteMember(a.id, a.site, a.region, a.capacity_bytes)
            for a in snap.appliances.values()
            if a.site == site and a.fresh and a.state != "unhealthy"
        ]

    def _record_requests(self, region: str, requests: Any) -> None:
        if not isinstance(requests, dict) or not requests:
            return
        try:
            self.popularity.record(region, requests, self.clock(), self.catalog)
        except PopularityError as exc:
            log.warning("request counts from region %s ignored: %s", region, exc)

    def _site_plan(self, snap: Snapshot, site: str, region: str, now: float) -> SitePlan:
        """The site's fill plan, recomputed at most once a minute or when the catalog
        or the site's membership changes (planning 100k titles takes about a second)."""
        members = self._site_members(snap, site)
        key = (site, self.catalog.version)
        cached = self._plans.get(key)
        ids = tuple(sorted(m.appliance_id for m in members))
        if (
            cached is not None
            and now - cached[0] < 60
            and tuple(sorted(cached[1].by_appliance)) == ids
        ):
            return cached[1]
        scores = self.popularity.title_scores(region, now, self.catalog)
        plan = plan_site(
            members,
            self.catalog,
            scores,
            policy=ReplicaPolicy(requests_per_replica=self.cfg.fill.requests_per_replica),
            headroom_fraction=self.cfg.fill.headroom_fraction,
        )
        self._plans = {k: v for k, v in self._plans.items() if k[1] == self.catalog.version}
        self._plans[key] = (now, plan)
        return plan

    async def handle_fill(self, request: web.Request) -> web.Response:
        snap = self.snapshot()
        appliance = snap.appliances.get(request.match_info["appliance"])
        if appliance is None:
            return _error(404, f"unknown appliance {request.match_info['appliance']!r}")
        now = self.clock()
        plan = self._site_plan(snap, appliance.site, appliance.region, now)
        if appliance.id not in plan.by_appliance:
            return _error(
                409,
                f"appliance {appliance.id!r} is not in its site's plan now "
                f"({_status_of(appliance)})",
            )
        body = manifest_from_plan(
            appliance.id,
            plan,
            self.catalog,
            generated_at=now,
            object_share=lambda t: self.popularity.object_share(t, now, self.catalog),
        )
        return _json(body)

    async def handle_fleet(self, request: web.Request) -> web.Response:
        snap = self.snapshot()
        counts: dict[str, int] = {}
        appliances = []
        for a in snap.appliances.values():
            status = _status_of(a)
            counts[status] = counts.get(status, 0) + 1
            appliances.append(
                {
                    "id": a.id,
                    "site": a.site,
                    "region": a.region,
                    "status": status,
                    "state": a.state,
                    "reasons": list(a.reasons),
                    "draining": a.draining,
                    "serving": a.serving,
                    "fresh": a.fresh,
                    "last_seen_seconds_ago": round(snap.taken_at - a.last_seen, 3),
                    "interval_seconds": a.interval_seconds,
                    "load_fraction": a.load_fraction,
                    "connections": a.connections,
                    "objects": a.objects,
                    "capacity_bytes": a.capacity_bytes,
                    "used_bytes": a.used_bytes,
                    "prefixes": [str(p) for p in a.prefixes],
                    "urls": list(a.urls),
                    "https_urls": list(a.https_urls),
                }
            )
        return _json(
            {
                "taken_at": snap.taken_at,
                "counts": counts,
                "catalog_titles": len(self.catalog.titles),
                "appliances": appliances,
            }
        )

    # ------------------------------------------------------------------ catalog
    def _is_admin(self, request: web.Request) -> bool:
        peer = _parse_ip(request.remote or "")
        return peer is not None and _in(peer, self._admin)

    async def handle_catalog(self, request: web.Request) -> web.Response:
        return _json(
            {
                "version": self.catalog.version,
                "titles": [
                    {
                        "id": t.id,
                        "prefix": t.prefix,
                        "mpd": t.mpd_path,
                        "objects": len(t.objects),
                        "bytes": t.size,
                        "origins": list(t.origins),
                    }
                    for t in self.catalog.titles.values()
                ],
            }
        )

    async def handle_add_title(self, request: web.Request) -> web.Response:
        if not self._is_admin(request):
            return _error(403, "adding titles is allowed from service.admin_networks only")
        try:
            data = await request.json(loads=orjson.loads)
        except (ValueError, orjson.JSONDecodeError):
            return _error(400, 'body must be JSON {"mpd_url": "http://origin/..."}')
        url = data.get("mpd_url") if isinstance(data, dict) else None
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            return _error(400, "mpd_url: must be an http(s) URL of an MPD")
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        try:
            title = await build_title_from_url(self._session, url, self.clock())
        except (CatalogError, aiohttp.ClientError, TimeoutError) as exc:
            return _error(422, f"cannot add {url}: {exc}")
        self.catalog.add(title)
        self._mpds.pop(title.id, None)
        await asyncio.to_thread(self.catalog.save, str(self.catalog_path))
        log.info("catalog: added %s (%d objects) from %s", title.id, len(title.objects), url)
        return _json({"ok": True, "title": title.id, "objects": len(title.objects)}, status=201)

    # ------------------------------------------------------------------ misc
    async def handle_metrics(self, request: web.Request) -> web.Response:
        snap = self.snapshot()
        counts = {"in-rotation": 0, "unhealthy": 0, "stale": 0, "draining": 0, "not-serving": 0}
        for a in snap.appliances.values():
            status = _status_of(a)
            counts[status] = counts.get(status, 0) + 1
        for state, n in counts.items():
            self.metrics.appliances.labels(state).set(n)
        self.metrics.titles.set(len(self.catalog.titles))
        return web.Response(
            body=generate_latest(self.metrics.registry),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def handle_healthz(self, request: web.Request) -> web.Response:
        return _json({"ok": True, "appliances": len(self.snapshot().appliances)})

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _status_of(a: Any) -> str:
    if not a.fresh:
        return "stale"
    if a.state == "unhealthy":
        return "unhealthy"
    if a.draining:
        return "draining"
    if not a.serving:
        return "not-serving"
    return "in-rotation"


def build_app(service: SteeringService) -> web.Application:
    app = web.Application(client_max_size=service.cfg.heartbeat.max_body_bytes)
    s = service
    app.router.add_post("/v1/heartbeat", s.handle_heartbeat)
    app.router.add_get("/v1/titles/{title}/urls", s.handle_urls)
    app.router.add_get("/v1/titles/{title}/manifest.mpd", s.handle_mpd)
    app.router.add_get("/v1/steering/{title}", s.handle_steering)
    app.router.add_get("/v1/explain/{title}", s.handle_explain)
    app.router.add_get("/v1/fill/{appliance}", s.handle_fill)
    app.router.add_get("/v1/fleet", s.handle_fleet)
    app.router.add_get("/v1/catalog", s.handle_catalog)
    app.router.add_post("/v1/catalog/titles", s.handle_add_title)
    app.router.add_get("/metrics", s.handle_metrics)
    app.router.add_get("/healthz", s.handle_healthz)

    async def cors(request: web.Request, response: web.StreamResponse) -> None:
        # Players fetch the MPD and the steering manifest from pages on other origins.
        if request.method == "GET":
            response.headers.setdefault("Access-Control-Allow-Origin", "*")

    app.on_response_prepare.append(cors)

    async def on_cleanup(_: web.Application) -> None:
        await s.close()

    app.on_cleanup.append(on_cleanup)
    return app


#: How often the whole heap is searched for reference cycles (see _young_collections_only).
FULL_COLLECTION_SECONDS: Final = 300.0


def _young_collections_only() -> None:
    """Let the cyclic collector run on its own only for young objects.

    Measured with ``oca bench steering --http-only`` (1,000 appliances, 500 heartbeats/s):
    the ranking caches, heartbeat records and copy-on-write indexes that outlive a young
    collection make the oldest generation tens of thousands of objects holding about a
    million references, so each automatic full collection (every 6-7 s under load)
    stalled every answer for 70-110 ms, and with larger young generations each young
    collection took 15-50 ms. With the interpreter's default young thresholds a young
    collection stays around a millisecond; full collections run every
    :data:`FULL_COLLECTION_SECONDS` instead, so cycles that reached the old generation
    are still reclaimed.
    """
    gc.set_threshold(700, 10, 1_000_000_000)


async def serve(cfg: SteeringConfig, *, ready: Callable[[list[str]], None] | None = None) -> int:
    """Run the service until SIGTERM/SIGINT; SIGHUP re-reads the catalog."""
    catalog_path = Path(cfg.service.catalog or Path(cfg.service.state_dir) / "catalog.json")
    try:
        catalog = Catalog.load(str(catalog_path)) if catalog_path.exists() else Catalog()
    except (CatalogError, ValueError) as exc:
        log.error("catalog %s: %s", catalog_path, exc)
        return 2
    service = SteeringService(cfg, catalog)
    service.remove_state_temp_files()
    if cfg.service.snapshot_interval_seconds > 0:
        service.warm_start()
    if not cfg.heartbeat.keys:
        log.warning("no [heartbeat] keys: heartbeats are accepted from anyone")
    if not cfg.urls.keys:
        log.warning("no [urls] keys: appliance URLs are handed out unsigned")
    # The catalog and fleet are millions of long-lived objects: keep them out of the
    # cyclic collector's scans, which would otherwise stall answers for tens of ms.
    gc.collect()
    gc.freeze()
    _young_collections_only()
    app = build_app(service)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    urls = []
    for i, addr in enumerate(cfg.service.listen):
        host, port = parse_listen(addr, f"service.listen[{i}]")
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        server = site._server
        assert server is not None
        for sock in server.sockets:  # type: ignore[attr-defined]
            h, p = sock.getsockname()[:2]
            urls.append(f"http://[{h}]:{p}" if ":" in h else f"http://{h}:{p}")
    service.public_url = (cfg.service.public_url or urls[0]).rstrip("/")
    for url in urls:
        print(f"oca-steering: listening {url}", flush=True)
    if ready is not None:
        ready(urls)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, service.reload_catalog)

    async def snapshots() -> None:
        interval = cfg.service.snapshot_interval_seconds
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.to_thread(service.save_state)
            except OSError as exc:
                log.warning("state snapshot not written: %s", exc)

    async def full_collections() -> None:
        while True:
            await asyncio.sleep(FULL_COLLECTION_SECONDS)
            gc.collect()

    task = asyncio.create_task(snapshots()) if cfg.service.snapshot_interval_seconds > 0 else None
    collector = asyncio.create_task(full_collections())
    await stop.wait()
    log.info("stopping")
    collector.cancel()
    if task is not None:
        task.cancel()
        try:
            service.save_state()
        except OSError as exc:
            log.warning("state snapshot not written: %s", exc)
    await runner.cleanup()
    return 0


def run_steering(cfg: SteeringConfig) -> int:
    logging.basicConfig(
        level=cfg.service.log_level.upper(),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.run(serve(cfg))
    return uvloop.run(serve(cfg))
