"""``oca bench steering``: steering decisions per second against a synthetic fleet.

In process, on one core: a synthetic catalog (``--titles`` titles of
``--objects-per-title`` objects) and fleet (``--appliances`` appliances in ``--sites``
sites of ``--regions`` regions, each site announcing an IPv4 /16 and an IPv6 /48, each
appliance an IPv4 /24 of its site's /16) is built by feeding real heartbeat documents
to :meth:`steering.fleet.Fleet.apply`, with full inventories. Titles are placed the way
the fill plan places them: title popularity follows a Zipf law; the ``--head`` most
popular titles are at every site, the others at a number of sites that falls with
their rank (at least two), and within a site on the first one to three appliances in
rendezvous order (:mod:`steering.hashing`). Requests pick a title by the same Zipf law
and a client address inside the announced prefixes (5 % outside all of them); the
requests form one stream that is not replayed, so titles of the long tail keep arriving
that the ranking caches have not seen, as in service.

It measures, alternating the two kinds of run ``--repeats`` times (medians and
min-max reported, as docs/benchmarks.md does for the serving benchmark), pinned to one
CPU:

1. **decisions/s**: ``fleet.snapshot()`` then :func:`steering.ranking.rank` for one
   request, as the service does per request, on a fleet that does not change;
2. **decisions/s with heartbeats**: the same while heartbeats arrive at the fleet's
   real rate (every appliance every ``--interval-seconds``, e.g. 500/s for 1,000
   appliances every 2 s), each decoded from JSON bytes and applied between decisions;
   ``--delta-fraction`` of them carry an inventory delta (one title filled, one
   evicted), the rest only health and load;

and, once, the latency of single decisions (p50/p99/p99.9) and of heartbeats, the
decisions/s of explain mode, and the resident memory of the catalog and the fleet.
Other processes' CPU use during each run is reported, since a busy neighbour skews
single runs by up to 30 % on small machines.

:func:`build` returns the catalog, the fleet and the heartbeat and request generators,
so an HTTP variant can drive a real service with the same workload.
"""

from __future__ import annotations

import argparse
import bisect
import gc
import ipaddress
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil

from steering.catalog import Catalog, CatalogObject, Title
from steering.fleet import Fleet
from steering.hashing import rendezvous_order
from steering.ranking import RankPolicy, rank

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
MiB = 1 << 20
_SHA = "0" * 64  # synthetic objects share one digest string (memory)
_V4_BASE = int(ipaddress.IPv4Address("11.0.0.0"))
_V6_BASE = int(ipaddress.IPv6Address("2001:db8::"))
_OUTSIDE = ipaddress.IPv4Network("192.0.2.0/24")


@dataclass
class SyntheticAppliance:
    """One appliance of the synthetic fleet and the state its heartbeats carry."""

    id: str
    site: str
    region: str
    lat: float
    lon: float
    prefixes: list[str]
    titles: set[int]  # ranks of the titles it holds
    boot_id: str
    seq: int = 0
    gen: int = 0


@dataclass
class SyntheticFleet:
    """The workload: catalog, fleet, and generators of heartbeats and requests."""

    catalog: Catalog
    fleet: Fleet
    appliances: list[SyntheticAppliance]
    title_ids: list[str]
    paths: list[tuple[str, ...]]  # by title rank
    interval_seconds: float
    zipf: float
    head: int
    sites: int
    regions: int
    _cum: list[float] = field(default_factory=list, repr=False)
    memory: dict[str, int] = field(default_factory=dict)  # bytes, resident, as built

    def __post_init__(self) -> None:
        total = 0.0
        for r in range(len(self.title_ids)):
            total += 1.0 / (r + 1) ** self.zipf
            self._cum.append(total)

    @property
    def title_copies(self) -> int:
        return sum(len(a.titles) for a in self.appliances)

    def pick_title(self, rng: random.Random) -> int:
        """A title rank, by popularity."""
        return bisect.bisect_left(self._cum, rng.random() * self._cum[-1])

    def heartbeat(
        self,
        a: SyntheticAppliance,
        sent_at: float,
        rng: random.Random,
        *,
        full: bool = False,
        delta_fraction: float = 0.0,
    ) -> dict[str, Any]:
        """The appliance's next heartbeat document (its state advances)."""
        a.seq += 1
        inventory: dict[str, Any] | None = None
        if full:
            a.gen += 1
            objects = [p for r in sorted(a.titles) for p in self.paths[r]]
            inventory = {"kind": "full", "epoch": a.boot_id, "gen": a.gen, "objects": objects}
        elif a.titles and rng.random() < delta_fraction:
            evict = rng.choice(sorted(a.titles))
            fill = self.pick_title(rng)
            if fill not in a.titles:
                a.titles.discard(evict)
                a.titles.add(fill)
                inventory = {
                    "kind": "delta", "epoch": a.boot_id, "base_gen": a.gen, "gen": a.gen + 1,
                    "added": list(self.paths[fill]), "removed": list(self.paths[evict]),
                }  # fmt: skip
                a.gen += 1
        roll = rng.random()
        state = "unhealthy" if roll < 0.005 else "degraded" if roll < 0.015 else "healthy"
        load = rng.random() * 0.9 if rng.random() > 0.05 else 0.85 + rng.random() * 0.15
        return {
            "schema": "oca.heartbeat",
            "version": 1,
            "appliance": {
                "id": a.id, "site": a.site, "region": a.region, "lat": a.lat, "lon": a.lon,
                "urls": [f"http://{a.id}.example:8080"],
                "https_urls": [f"https://{a.id}.example:8443"],
            },
            "boot_id": a.boot_id,
            "seq": a.seq,
            "sent_at": sent_at,
            "interval_seconds": self.interval_seconds,
            "prefixes": a.prefixes,
            "health": {
                "state": state,
                "reasons": ["disk ssd:/srv/ssd1 failed: EIO"] if state != "healthy" else [],
                "draining": rng.random() < 0.005,
                "serving": True,
                "disks": [
                    {"tier": "ssd", "path": f"/srv/ssd{i}", "state": "ok", "reason": "",
                     "capacity_bytes": 2 * 10**12, "used_bytes": 10**12}
                    for i in range(2)
                ],
                "workers": {"configured": 4, "running": 4, "restarts": 0},
                "fill": {"state": "idle", "last_run_at": None, "reason": ""},
            },
            "load": {
                "nic_bits_per_second": load * 1e10, "link_capacity_bits_per_second": 1e10,
                "cpu_fraction": load * 0.5, "connections": int(load * 5000),
                "load_fraction": load,
            },
            "capacity_bytes": 4 * 10**12,
            "used_bytes": 2 * 10**12,
            "inventory": inventory,
            "requests": {},
        }  # fmt: skip

    def heartbeats(
        self, start: float, rng: random.Random, *, delta_fraction: float = 0.1
    ) -> Iterator[tuple[float, dict[str, Any]]]:
        """(time, document) at the fleet's real rate: appliances in turn, each every
        ``interval_seconds``, evenly spread."""
        step = self.interval_seconds / len(self.appliances)
        j = 0
        while True:
            a = self.appliances[j % len(self.appliances)]
            t = start + j * step
            yield t, self.heartbeat(a, t, rng, delta_fraction=delta_fraction)
            j += 1

    def requests(self, count: int, rng: random.Random) -> list[tuple[IPAddress, str]]:
        """(client, title id) pairs: titles by popularity, clients inside a random
        appliance's prefixes (70 % its /24, 15 % its site's /16, 10 % its site's /48)
        or outside every prefix (5 %)."""
        out: list[tuple[IPAddress, str]] = []
        nets = {a.id: [ipaddress.ip_network(p) for p in a.prefixes] for a in self.appliances}
        for _ in range(count):
            a = rng.choice(self.appliances)
            roll = rng.random()
            addr: IPAddress
            if roll < 0.05:
                addr = _OUTSIDE[rng.randrange(1, 255)]
            else:
                net = nets[a.id][1 if roll < 0.75 else 0 if roll < 0.9 else 2]
                offset = rng.randrange(1, min(net.num_addresses, 1 << 16) - 1)
                addr = ipaddress.ip_address(int(net.network_address) + offset)
            out.append((addr, self.title_ids[self.pick_title(rng)]))
        return out


def _title(tid: str, objects: int) -> Title:
    prefix = f"/titles/{tid}/"
    objs = [CatalogObject(prefix + "manifest.mpd", 4096, _SHA, "mpd")]
    objs += [
        CatalogObject(f"{prefix}v1/seg-{k:05d}.m4s", 2 * MiB, _SHA, "media")
        for k in range(1, objects)
    ]
    return Title(tid, prefix, prefix + "manifest.mpd", tuple(objs), ("http://origin:8000",), 0.0)


def build(
    *,
    appliances: int = 1000,
    sites: int = 200,
    titles: int = 100_000,
    objects_per_title: int = 4,
    regions: int = 20,
    head: int = 1000,
    zipf: float = 0.9,
    interval_seconds: float = 2.0,
    seed: int = 1,
    now: float = 0.0,
    progress: Callable[[str], None] | None = None,
) -> SyntheticFleet:
    """The synthetic catalog and fleet (see the module docstring); every appliance has
    sent one heartbeat with its full inventory at ``now``."""
    if not 1 <= sites <= min(appliances, 4000) or regions < 1 or titles < 1:
        raise ValueError("need 1 <= sites <= min(appliances, 4000), regions >= 1, titles >= 1")
    if objects_per_title < 1:
        raise ValueError("objects_per_title must be >= 1")
    rng = random.Random(seed)
    say = progress or (lambda _: None)
    rss0 = _rss()
    ids = [f"t{r:06d}" for r in range(titles)]
    catalog = Catalog(_title(t, objects_per_title) for t in ids)
    paths = [tuple(o.path for o in catalog.titles[t].objects) for t in ids]
    rss_catalog = _rss()
    say(f"catalog: {titles} titles x {objects_per_title} objects")

    centres = [(rng.uniform(-50, 60), rng.uniform(-150, 150)) for _ in range(regions)]
    fleet_members: list[SyntheticAppliance] = []
    by_site: list[list[SyntheticAppliance]] = [[] for _ in range(sites)]
    site_place = []
    for k in range(sites):
        lat0, lon0 = centres[k % regions]
        site_place.append(
            (round(lat0 + rng.uniform(-5, 5), 4), round(lon0 + rng.uniform(-5, 5), 4))
        )
    for i in range(appliances):
        k = i % sites
        j = i // sites
        v4 = ipaddress.IPv4Network((_V4_BASE + (k << 16), 16))
        v4_own = ipaddress.IPv4Network((_V4_BASE + (k << 16) + ((j % 256) << 8), 24))
        v6 = ipaddress.IPv6Network((_V6_BASE + (k << 80), 48))
        a = SyntheticAppliance(
            id=f"oca-s{k:04d}-{j:02d}",
            site=f"site-{k:04d}",
            region=f"region-{k % regions:02d}",
            lat=site_place[k][0],
            lon=site_place[k][1],
            prefixes=[str(v4), str(v4_own), str(v6)],
            titles=set(),
            boot_id=f"boot{rng.getrandbits(64):016x}",
        )
        fleet_members.append(a)
        by_site[k].append(a)

    for r, tid in enumerate(ids):
        if r < head:
            where: Sequence[int] = range(sites)
            replicas = 3 if r < head // 10 else 2 if r < head // 2 else 1
        else:
            where = rng.sample(range(sites), min(sites, max(2, round(sites * head / (r + 1)))))
            replicas = 1
        for k in where:
            members = by_site[k]
            if replicas >= len(members):
                chosen = members
            else:
                order = rendezvous_order(tid, [m.id for m in members])[:replicas]
                chosen = [m for m in members if m.id in order]
            for m in chosen:
                m.titles.add(r)
    synthetic = SyntheticFleet(
        catalog, Fleet(catalog=catalog), fleet_members, ids, paths, interval_seconds, zipf,
        head, sites, regions,
    )  # fmt: skip
    say(f"placement: {synthetic.title_copies} title copies")
    rss_placed = _rss()
    for a in fleet_members:
        synthetic.fleet.apply(synthetic.heartbeat(a, now, rng, full=True), now)
    synthetic.fleet.snapshot(now, catalog)
    synthetic.memory = {"catalog": rss_catalog - rss0, "fleet": _rss() - rss_placed}
    say("fleet: every appliance has sent its full inventory")
    return synthetic


# --------------------------------------------------------------------------- measuring


def _pin(cpu: int | None) -> int | None:
    if not hasattr(os, "sched_setaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    target = allowed[-1] if cpu is None else cpu
    os.sched_setaffinity(0, {target})
    return target


class _CpuWatch:
    """Other processes' CPU use while a run lasts, as a share of all CPUs."""

    def __init__(self) -> None:
        self._me = psutil.Process()
        self._t0 = time.perf_counter()
        self._all0 = psutil.cpu_times()
        self._mine0 = self._me.cpu_times()

    def others(self) -> float:
        wall = time.perf_counter() - self._t0
        a0, a1 = self._all0, psutil.cpu_times()
        busy = (a1.user - a0.user) + (a1.system - a0.system) + (a1.nice - a0.nice)
        m0, m1 = self._mine0, self._me.cpu_times()
        mine = (m1.user - m0.user) + (m1.system - m0.system)
        return max(0.0, busy - mine) / (wall * (psutil.cpu_count() or 1))


def _rss() -> int:
    return int(psutil.Process().memory_info().rss)


def _percentiles(ns: list[int]) -> dict[str, float]:
    ns = sorted(ns)

    def at(q: float) -> float:
        return ns[min(len(ns) - 1, int(q * len(ns)))] / 1e3

    return {"p50_us": at(0.5), "p99_us": at(0.99), "p999_us": at(0.999), "max_us": ns[-1] / 1e3}


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def run_inprocess(
    appliances: int = 1000,
    sites: int = 200,
    titles: int = 100_000,
    *,
    objects_per_title: int = 4,
    regions: int = 20,
    head: int = 1000,
    zipf: float = 0.9,
    interval_seconds: float = 2.0,
    decisions: int = 100_000,
    repeats: int = 5,
    heartbeat_seconds: float = 4.0,
    delta_fraction: float = 0.1,
    n: int = 10,
    cpu: int | None = None,
    pin: bool = True,
    seed: int = 1,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Build the synthetic fleet and measure (see the module docstring); the figures."""
    pinned = _pin(cpu) if pin else None
    say = progress or (lambda _: None)
    t0 = time.perf_counter()
    synthetic = build(
        appliances=appliances, sites=sites, titles=titles, objects_per_title=objects_per_title,
        regions=regions, head=head, zipf=zipf, interval_seconds=interval_seconds, seed=seed,
        now=0.0, progress=say,
    )  # fmt: skip
    build_s = time.perf_counter() - t0
    fleet, catalog = synthetic.fleet, synthetic.catalog
    # One stream of requests, never replayed while it lasts: the ranking caches see new
    # titles of the long tail as they would in service (the stream wraps only when the
    # runs need more than ``pool`` decisions).
    warmup = max(decisions, 20_000)
    pool = min(warmup + decisions * repeats * 3, 600_000)
    say(f"drawing {pool:,} requests")
    requests = synthetic.requests(pool, random.Random(seed + 1))
    policy = RankPolicy(n=n)
    cursor = 0

    def take() -> tuple[IPAddress, str]:
        nonlocal cursor
        request = requests[cursor]
        cursor = cursor + 1 if cursor + 1 < len(requests) else 0
        return request

    # heartbeats for every mixed run, decoded from bytes in the run as the service does
    rate = appliances / interval_seconds
    per_run = max(1, int(rate * heartbeat_seconds))
    sim0 = 1.0
    beats = synthetic.heartbeats(sim0, random.Random(seed + 2), delta_fraction=delta_fraction)
    blobs = [(t, orjson.dumps(doc)) for t, doc in (next(beats) for _ in range(per_run * repeats))]

    def decide(count: int, now: float) -> float:
        nonlocal cursor
        if cursor + count > len(requests):
            cursor = 0
        batch = requests[cursor : cursor + count]
        cursor += count
        started = time.perf_counter()
        for client, title in batch:
            rank(fleet.snapshot(now, catalog), client, title=title, policy=policy)
        return time.perf_counter() - started

    # As the service does after loading: keep the millions of long-lived objects (and
    # here the requests and heartbeats drawn in advance) out of the cyclic collector's
    # full passes, which would stall a decision for 0.1-0.5 s.
    gc.collect()
    gc.freeze()
    say("warming up")
    rss_cold = _rss()
    decide(warmup, sim0)  # fills the ranking caches
    rss_warm = _rss()

    pure: list[float] = []
    pure_others: list[float] = []
    mixed: list[float] = []
    mixed_others: list[float] = []
    applied_rates: list[float] = []
    apply_ns: list[int] = []
    mixed_ns: list[int] = []
    rebuilds = 0
    for rep in range(repeats):
        run_start = sim0 + rep * heartbeat_seconds
        watch = _CpuWatch()
        pure.append(decisions / decide(decisions, run_start))
        pure_others.append(watch.others())
        say(f"run {rep + 1}/{repeats}: {pure[-1]:,.0f} decisions/s")

        batch = blobs[rep * per_run : (rep + 1) * per_run]
        watch = _CpuWatch()
        done = i = 0
        started = time.perf_counter()
        last = fleet.snapshot(run_start, catalog)
        while i < len(batch):
            now_wall = time.perf_counter()
            sim = run_start + (now_wall - started)
            while i < len(batch) and batch[i][0] <= sim:
                h0 = time.perf_counter_ns()
                fleet.apply(orjson.loads(batch[i][1]), sim)
                apply_ns.append(time.perf_counter_ns() - h0)
                i += 1
            client, title = take()
            d0 = time.perf_counter_ns()
            snap = fleet.snapshot(sim, catalog)
            rank(snap, client, title=title, policy=policy)
            mixed_ns.append(time.perf_counter_ns() - d0)
            if snap is not last:
                rebuilds += 1
                last = snap
            done += 1
        wall = time.perf_counter() - started
        mixed.append(done / wall)
        applied_rates.append(len(batch) / wall)
        mixed_others.append(watch.others())
        say(f"run {rep + 1}/{repeats} with heartbeats: {mixed[-1]:,.0f} decisions/s")

    end = sim0 + repeats * heartbeat_seconds
    sample = min(decisions, 50_000)
    latency_ns = []
    for _ in range(sample):
        client, title = take()
        d0 = time.perf_counter_ns()
        rank(fleet.snapshot(end, catalog), client, title=title, policy=policy)
        latency_ns.append(time.perf_counter_ns() - d0)
    explain_n = 200
    t_explain = time.perf_counter()
    for _ in range(explain_n):
        client, title = take()
        rank(fleet.snapshot(end, catalog), client, title=title, policy=policy, explain=True)
    explain_rate = explain_n / (time.perf_counter() - t_explain)

    snap = fleet.snapshot(end, catalog)
    gc.unfreeze()
    return {
        "appliances": appliances,
        "sites": sites,
        "regions": regions,
        "titles": titles,
        "objects_per_title": objects_per_title,
        "title_copies": synthetic.title_copies,
        "objects_held": sum(v.objects for v in snap.appliances.values()),
        "zipf": zipf,
        "n": n,
        "cpu": pinned,
        "build_seconds": build_s,
        "memory_mib": {
            "catalog": synthetic.memory["catalog"] / MiB,
            "fleet": synthetic.memory["fleet"] / MiB,
            "ranking_caches": (rss_warm - rss_cold) / MiB,
            "process": _rss() / MiB,
        },
        "decisions_per_second": _spread(pure),
        "decisions_other_cpu": _spread(pure_others),
        "latency": _percentiles(latency_ns),
        "with_heartbeats": {
            "heartbeats_per_second": _spread(applied_rates),
            "decisions_per_second": _spread(mixed),
            "decision_latency": _percentiles(mixed_ns),
            "heartbeat_latency": _percentiles(apply_ns),
            "delta_fraction": delta_fraction,
            "snapshot_rebuilds": rebuilds,
            "other_cpu": _spread(mixed_others),
        },
        "explain_decisions_per_second": explain_rate,
        "repeats": repeats,
        "decisions_per_run": decisions,
    }


def print_report(r: dict[str, Any]) -> None:
    """The figures as a table."""
    print(
        f"\nsteering ranking, in process: {r['appliances']} appliances in {r['sites']} sites "
        f"({r['regions']} regions), {r['titles']} titles x {r['objects_per_title']} objects, "
        f"{r['title_copies']:,} title copies ({r['objects_held']:,} objects held), "
        f"Zipf {r['zipf']}, n={r['n']}, CPU {r['cpu'] if r['cpu'] is not None else 'any'}"
    )
    mem = r["memory_mib"]
    print(
        f"built in {r['build_seconds']:.1f} s; resident memory: catalog {mem['catalog']:.0f} "
        f"MiB, fleet {mem['fleet']:.0f} MiB, ranking caches {mem['ranking_caches']:.0f} MiB "
        f"(whole process {mem['process']:.0f} MiB)"
    )
    h = r["with_heartbeats"]
    print(f"\n    {'':36} {'median':>10} {'min':>10} {'max':>10}")
    rows = [
        ("decisions/s", r["decisions_per_second"]),
        ("decisions/s with heartbeats", h["decisions_per_second"]),
        ("heartbeats/s applied meanwhile", h["heartbeats_per_second"]),
    ]
    for name, s in rows:
        print(f"    {name:36} {s['median']:10,.0f} {s['min']:10,.0f} {s['max']:10,.0f}")
    print(
        f"    ({r['repeats']} runs of each, alternated; other processes used "
        f"{r['decisions_other_cpu']['max'] * 100:.0f}% / {h['other_cpu']['max'] * 100:.0f}% "
        f"of the CPUs at most)"
    )
    print(f"\n    {'latency':36} {'p50':>10} {'p99':>10} {'p99.9':>10}")
    for name, lat in (
        ("decision (fleet unchanged)", r["latency"]),
        ("decision (heartbeats arriving)", h["decision_latency"]),
        ("heartbeat (decode + apply)", h["heartbeat_latency"]),
    ):
        print(
            f"    {name:36} {lat['p50_us']:8.1f}us {lat['p99_us']:8.1f}us {lat['p999_us']:8.1f}us"
        )
    print(
        f"\n    {h['snapshot_rebuilds']:,} snapshot rebuilds, "
        f"{h['delta_fraction'] * 100:.0f}% of heartbeats with an inventory delta; "
        f"explain mode: {r['explain_decisions_per_second']:,.0f} decisions/s"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="oca bench steering", description=__doc__.split("\n\n")[0])
    ap.add_argument("--appliances", type=int, default=1000)
    ap.add_argument("--sites", type=int, default=200)
    ap.add_argument("--regions", type=int, default=20)
    ap.add_argument("--titles", type=int, default=100_000)
    ap.add_argument("--objects-per-title", type=int, default=4)
    ap.add_argument("--head", type=int, default=1000, help="titles placed at every site")
    ap.add_argument("--zipf", type=float, default=0.9, help="popularity exponent (default 0.9)")
    ap.add_argument("--interval-seconds", type=float, default=2.0, help="heartbeat interval")
    ap.add_argument("--decisions", type=int, default=100_000, help="decisions per run")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--heartbeat-seconds", type=float, default=4.0,
                    help="length of each run with heartbeats (default 4 s)")  # fmt: skip
    ap.add_argument("--delta-fraction", type=float, default=0.1,
                    help="share of heartbeats with an inventory delta (default 0.1)")  # fmt: skip
    ap.add_argument("-n", type=int, default=10, help="appliances per answer (default 10)")
    ap.add_argument("--cpu", type=int, help="pin to this CPU (default: the last one allowed)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin to one CPU")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", type=Path, help="write the figures to this file")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    ap.add_argument("--http", action="store_true",
                    help="also drive a real `oca steering` process over HTTP with wrk")  # fmt: skip
    ap.add_argument("--http-only", action="store_true", help="only the HTTP measurement")
    ap.add_argument("--http-seconds", type=float, default=10.0, help="wrk run length")
    ap.add_argument("--http-connections", default="1,4",
                    help="wrk connections, one run per comma-separated value")  # fmt: skip
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.http_only:
        return _main_http(args, {})
    try:
        figures = run_inprocess(
            args.appliances, args.sites, args.titles,
            objects_per_title=args.objects_per_title, regions=args.regions, head=args.head,
            zipf=args.zipf, interval_seconds=args.interval_seconds, decisions=args.decisions,
            repeats=args.repeats, heartbeat_seconds=args.heartbeat_seconds,
            delta_fraction=args.delta_fraction, n=args.n, cpu=args.cpu, pin=not args.no_pin,
            seed=args.seed,
            progress=None if args.quiet else (lambda s: print(f"  {s}", file=sys.stderr)),
        )  # fmt: skip
    except ValueError as exc:
        print(f"oca bench steering: {exc}", file=sys.stderr)
        return 2
    print_report(figures)
    if args.http:
        return _main_http(args, figures)
    if args.json:
        args.json.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))
    return 0


def _main_http(args: argparse.Namespace, figures: dict[str, Any]) -> int:
    from bench.steering_http import print_http, run_http

    try:
        connections = [int(c) for c in args.http_connections.split(",") if c.strip()]
        syn = build(
            appliances=args.appliances, sites=args.sites, titles=args.titles,
            objects_per_title=args.objects_per_title, regions=args.regions, head=args.head,
            zipf=args.zipf, interval_seconds=args.interval_seconds, seed=args.seed,
            now=time.time(),
            progress=None if args.quiet else (lambda s: print(f"  {s}", file=sys.stderr)),
        )  # fmt: skip
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
        service_cpu, client_cpu = (0, 1) if (os.cpu_count() or 1) >= 2 else (None, None)
        runs = []
        for c in connections:
            r = run_http(
                syn, duration_s=args.http_seconds, connections=c,
                delta_fraction=args.delta_fraction, service_cpu=service_cpu,
                client_cpu=client_cpu,
            )  # fmt: skip
            print_http(r)
            runs.append(r)
    except (ValueError, RuntimeError) as exc:
        print(f"oca bench steering: {exc}", file=sys.stderr)
        return 2
    figures["http"] = runs
    if args.json:
        args.json.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
