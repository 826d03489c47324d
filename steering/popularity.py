"""Title popularity per region: exponentially decayed request counts, plus boosts.

Theory of operation
-------------------
Appliances report the requests they served since their last heartbeat, per object path.
:meth:`Popularity.record` attributes each count to its title (through the catalog) and
adds it to two exponentially decayed counters: one per (region, title), which ranks
titles for the fill manifests of that region, and one per object (over all regions),
which says how a title's requests spread over its objects.

A decayed counter weighs a request seen at time ``t_i`` by ``2^(-(now - t_i) / h)``,
``h`` being ``half_life_seconds``: the continuous form of a sliding window that
forgets smoothly, as in LRFU (Lee et al., IEEE ToC 2001) and in the fill's eviction
policy (docs/fill.md). It is kept as ``(value, last_update)``: an update first decays
the value to the update's time, so recording is O(1) however long the history, and a
report that arrives late is weighed as of its own time, so the order of reports does
not matter. A steady rate of ``r`` requests per second converges to ``r * h / ln 2``,
so :meth:`Popularity.title_scores` reports ``value * ln 2 / h`` scaled to *requests per
day*, the unit of a fill manifest's ``popularity``.

**Spread over a title's objects.** Per-object counts are sparse (most segments of most
titles were requested rarely or never), and an object nobody asked for yet is not cold
when its title is hot: players that start a title go on to its other segments. So
:meth:`Popularity.object_share` smooths the observed distribution with a prior, as a
Dirichlet posterior mean does::

    share(o) = (observed(o) + a * prior(o)) / (sum of observed + a)

``a`` is ``prior_weight`` (in requests). The prior (:func:`positional_prior`) gives the
MPD, init and index objects one unit each (a play fetches them once) and the k-th other
object of a directory (a rendition's media segments, in path order)
``2^(-k / prior_half_segments)``: viewers abandon, so early segments are requested more
than late ones (Yu et al., EuroSys 2006; the shape steering/forecast.py fits from
counts).

**Boosts.** A title about to be released has no requests yet. A :class:`Boost` raises
a title's score during a window to ``max(observed * factor, requests_per_day)``: the
floor holds until observed demand passes it. Its window runs from ``starts_at`` (by
default ``lead_seconds`` before the title's catalog ``release_at``, or at once for a
title without one) until ``until`` (by default no end). Besides the configured boosts,
every title whose catalog ``release_at`` is set gets ``release_requests_per_day`` as a
floor from ``release_lead_seconds`` before its release until ``release_hold_seconds``
after it (two half-lives by default: by then the decayed count has reached three
quarters of a steady demand). With several boosts for a title the highest score wins.

Regions are independent: counts recorded for one never change another's scores.
Titles the catalog does not know are ignored when recorded and left out of scores; the
catalog is an argument of every call, so a reloaded catalog takes effect at once.

The state is soft (it rebuilds from heartbeats); :meth:`Popularity.to_json` /
:meth:`Popularity.from_json` (and :meth:`Popularity.save` / :meth:`Popularity.load`
for a file) let a restart start warm. Apart from those two file methods, nothing here
does I/O, and the time is an argument.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NotRequired, TypedDict, Unpack

import orjson

from steering.files import write_atomic

if TYPE_CHECKING:
    from steering.catalog import Catalog, Title

__all__ = [
    "POPULARITY_SCHEMA",
    "Boost",
    "Popularity",
    "PopularityError",
    "PopularitySettings",
    "positional_prior",
]

POPULARITY_SCHEMA: Final = "oca.popularity"
POPULARITY_VERSION: Final = 1
SECONDS_PER_DAY: Final = 86400.0
DEFAULT_LEAD_SECONDS: Final = 2 * 86400.0

_ONCE_PER_PLAY: Final = frozenset({"mpd", "init", "index"})


class PopularityError(ValueError):
    """Bad input to :class:`Popularity` or a saved state that cannot be read; ``field``
    names where."""

    def __init__(self, field: str, detail: str) -> None:
        self.field = field
        self.detail = detail
        super().__init__(f"{field}: {detail}" if field else detail)


# ------------------------------------------------------------------ boosts
@dataclass(frozen=True, slots=True)
class Boost:
    """Raise a title's score during a window (see the module docstring).

    While active, the title's score in a region is
    ``max(observed * factor, requests_per_day)``.
    """

    title_id: str
    requests_per_day: float = 0.0
    """Floor of the score while active (e.g. the release's marketing forecast)."""
    factor: float = 1.0
    """Multiplies the observed score while active."""
    starts_at: float | None = None
    """Start (unix seconds); None: ``lead_seconds`` before the title's ``release_at``, or
    always when the title has no release time."""
    until: float | None = None
    """End (unix seconds, excluded); None: no end."""
    lead_seconds: float | None = None
    """How long before ``release_at`` a boost without ``starts_at`` starts; None: the
    :class:`Popularity`'s ``release_lead_seconds``."""
    region: str | None = None
    """Only this region; None: every region."""

    def __post_init__(self) -> None:
        if not isinstance(self.title_id, str) or not self.title_id:
            raise PopularityError("title_id", "expected a non-empty string")
        for name in ("requests_per_day", "factor"):
            _check_number(name, getattr(self, name), lo=0.0)
        for name in ("starts_at", "until", "lead_seconds"):
            value = getattr(self, name)
            if value is not None:
                _check_number(name, value, lo=0.0 if name == "lead_seconds" else -math.inf)
        if self.starts_at is not None and self.until is not None and self.until <= self.starts_at:
            raise PopularityError(
                "until", f"must be after starts_at ({self.starts_at}), got {self.until}"
            )
        if self.region is not None and (not isinstance(self.region, str) or not self.region):
            raise PopularityError("region", "expected a non-empty string or None")

    def window(
        self, release_at: float | None, default_lead_seconds: float = DEFAULT_LEAD_SECONDS
    ) -> tuple[float, float]:
        """``[start, end)`` in unix seconds for a title released at ``release_at``."""
        if self.starts_at is not None:
            start = self.starts_at
        elif release_at is not None:
            lead = self.lead_seconds if self.lead_seconds is not None else default_lead_seconds
            start = release_at - lead
        else:
            start = -math.inf
        return start, (self.until if self.until is not None else math.inf)

    def apply(self, observed: float) -> float:
        """The boosted score for an ``observed`` score (requests per day)."""
        return max(observed * self.factor, self.requests_per_day)


# ------------------------------------------------------------------ object prior
def positional_prior(title: Title, *, half_segments: float = 150.0) -> dict[str, float]:
    """Share of a title's requests expected for each of its objects, before any count:
    one unit for the MPD, init and index objects, ``2^(-k / half_segments)`` for the
    k-th other object of a directory (in path order), normalised to sum to 1."""
    _check_number("half_segments", half_segments, lo=0.0, strict=True)
    weights: dict[str, float] = {}
    position: dict[str, int] = {}
    for obj in title.objects:
        if obj.kind in _ONCE_PER_PLAY:
            weights[obj.path] = 1.0
            continue
        directory = obj.path.rsplit("/", 1)[0]
        k = position.get(directory, 0)
        position[directory] = k + 1
        weights[obj.path] = 2.0 ** (-k / half_segments)
    total = sum(weights.values())
    return {p: w / total for p, w in weights.items()} if total > 0 else {}


# ------------------------------------------------------------------ decayed counters
class _Decayed:
    """A request count decayed to ``at`` (see the module docstring)."""

    __slots__ = ("at", "value")

    def __init__(self, value: float = 0.0, at: float = -math.inf) -> None:
        self.value = value
        self.at = at

    def add(self, n: float, now: float, rate: float) -> None:
        if now >= self.at:
            if self.value:
                self.value *= math.exp(-(now - self.at) * rate)
            self.value += n
            self.at = now
        else:  # a late report: weigh it as seen from the newer time
            self.value += n * math.exp(-(self.at - now) * rate)

    def value_at(self, now: float, rate: float) -> float:
        if now <= self.at:
            return self.value
        return self.value * math.exp(-(now - self.at) * rate)


class PopularitySettings(TypedDict, total=False):
    """The keyword arguments of :class:`Popularity` other than the half-life."""

    release_lead_seconds: float
    release_requests_per_day: float
    release_hold_seconds: float | None
    prior_weight: float
    prior_half_segments: float


class _BoostJSON(TypedDict):
    title: str
    requests_per_day: float
    factor: float
    lead_seconds: NotRequired[float]
    starts_at: NotRequired[float]
    until: NotRequired[float]
    region: NotRequired[str]


class _StateJSON(TypedDict):
    schema: str
    version: int
    half_life_seconds: float
    regions: dict[str, dict[str, tuple[float, float]]]
    objects: dict[str, dict[str, tuple[float, float]]]
    boosts: list[_BoostJSON]


# ------------------------------------------------------------------ popularity
class Popularity:
    """Decayed request counts per region and title, per object, and boosts."""

    def __init__(
        self,
        half_life_seconds: float,
        *,
        release_lead_seconds: float = DEFAULT_LEAD_SECONDS,
        release_requests_per_day: float = 0.0,
        release_hold_seconds: float | None = None,
        prior_weight: float = 20.0,
        prior_half_segments: float = 150.0,
    ) -> None:
        _check_number("half_life_seconds", half_life_seconds, lo=0.0, strict=True)
        _check_number("release_lead_seconds", release_lead_seconds, lo=0.0)
        _check_number("release_requests_per_day", release_requests_per_day, lo=0.0)
        if release_hold_seconds is not None:
            _check_number("release_hold_seconds", release_hold_seconds, lo=0.0)
        _check_number("prior_weight", prior_weight, lo=0.0)
        _check_number("prior_half_segments", prior_half_segments, lo=0.0, strict=True)
        self._half_life = float(half_life_seconds)
        self._rate = math.log(2) / self._half_life
        self._release_lead = float(release_lead_seconds)
        self._release_floor = float(release_requests_per_day)
        self._release_hold = (
            float(release_hold_seconds) if release_hold_seconds is not None else 2 * self._half_life
        )
        self._prior_weight = float(prior_weight)
        self._prior_half = float(prior_half_segments)
        self._regions: dict[str, dict[str, _Decayed]] = {}
        self._objects: dict[str, dict[str, _Decayed]] = {}
        self._boosts: dict[str, tuple[Boost, ...]] = {}
        # titles with a release time, per catalog version (catalog id, version) -> list
        self._releases_key: tuple[int, int] | None = None
        self._releases: list[tuple[str, float]] = []

    @property
    def half_life_seconds(self) -> float:
        return self._half_life

    def regions(self) -> tuple[str, ...]:
        """Regions with recorded requests, sorted."""
        return tuple(sorted(self._regions))

    # -------------------------------------------------------------- intake
    def record(self, region: str, counts: Mapping[str, float], now: float, catalog: Catalog) -> int:
        """Add the requests ``counts`` seen in ``region`` at time ``now``.

        Keys are object paths (``/titles/tos/v720/seg-00001.m4s``, attributed to the
        title holding them) or title ids (``tos``, counted for the title only). Returns
        how many keys were ignored because ``catalog`` knows no such title. Raises
        :class:`PopularityError` on a negative or non-finite count (nothing recorded).
        """
        if not isinstance(region, str) or not region:
            raise PopularityError("region", "expected a non-empty string")
        _check_number("now", now)
        for key, n in counts.items():
            _check_number(f"counts[{key!r}]", n, lo=0.0)
        rate = self._rate
        titles = self._regions.setdefault(region, {})
        ignored = 0
        for key, n in counts.items():
            if not n:
                continue
            if key.startswith("/"):
                found = catalog.lookup(key)
                if found is not None:
                    title_id = found[0].id
                    per_object = self._objects.setdefault(title_id, {})
                    counter = per_object.get(key)
                    if counter is None:
                        counter = per_object[key] = _Decayed()
                    counter.add(float(n), now, rate)
                else:
                    title = catalog.title_of(key)
                    if title is None:
                        ignored += 1
                        continue
                    title_id = title.id
            elif catalog.get(key) is not None:
                title_id = key
            else:
                ignored += 1
                continue
            counter = titles.get(title_id)
            if counter is None:
                counter = titles[title_id] = _Decayed()
            counter.add(float(n), now, rate)
        if not titles:
            del self._regions[region]
        return ignored

    # -------------------------------------------------------------- scores
    def title_scores(self, region: str, now: float, catalog: Catalog) -> dict[str, float]:
        """Predicted requests per day for each title in ``region`` at ``now``, boosts
        applied; only titles ``catalog`` knows and with a score above zero."""
        scale = self._rate * SECONDS_PER_DAY
        rate = self._rate
        out: dict[str, float] = {}
        for title_id, counter in self._regions.get(region, {}).items():
            value = counter.value_at(now, rate) * scale
            if value > 0 and catalog.get(title_id) is not None:
                out[title_id] = value
        boosted: dict[str, float] = {}
        if self._release_floor > 0:
            for title_id, release_at in self._upcoming(catalog):
                if release_at - self._release_lead <= now < release_at + self._release_hold:
                    boosted[title_id] = max(out.get(title_id, 0.0), self._release_floor)
        for title_id, boosts in self._boosts.items():
            title = catalog.get(title_id)
            if title is None:
                continue
            observed = out.get(title_id, 0.0)
            for b in boosts:
                if self._active(b, now, title.release_at, region):
                    value = b.apply(observed)
                    boosted[title_id] = max(boosted.get(title_id, value), value)
        for title_id, value in boosted.items():
            if value > 0:
                out[title_id] = value
            else:
                out.pop(title_id, None)
        return out

    def title_score(self, region: str, title_id: str, now: float, catalog: Catalog) -> float:
        """One title's score in ``region`` (0.0 when unknown); see :meth:`title_scores`."""
        title = catalog.get(title_id)
        if title is None:
            return 0.0
        counter = self._regions.get(region, {}).get(title_id)
        observed = (
            counter.value_at(now, self._rate) * self._rate * SECONDS_PER_DAY if counter else 0.0
        )
        boosted = [
            b.apply(observed)
            for b in self._boosts.get(title_id, ())
            if self._active(b, now, title.release_at, region)
        ]
        release_at = title.release_at
        if (
            self._release_floor > 0
            and release_at is not None
            and release_at - self._release_lead <= now < release_at + self._release_hold
        ):
            boosted.append(max(observed, self._release_floor))
        return max(boosted) if boosted else observed

    def object_share(self, title_id: str, now: float, catalog: Catalog) -> dict[str, float]:
        """How the title's requests spread over its objects (path -> share, summing to
        1): observed counts smoothed by :func:`positional_prior`. Empty for a title
        ``catalog`` does not know."""
        title = catalog.get(title_id)
        if title is None:
            return {}
        prior = positional_prior(title, half_segments=self._prior_half)
        counters = self._objects.get(title_id, {})
        rate = self._rate
        observed: dict[str, float] = {}
        for obj in title.objects:
            counter = counters.get(obj.path)
            if counter is not None:
                observed[obj.path] = counter.value_at(now, rate)
        total = sum(observed.values())
        a = self._prior_weight
        if total + a <= 0:
            return prior
        return {p: (observed.get(p, 0.0) + a * w) / (total + a) for p, w in prior.items()}

    def _active(self, boost: Boost, now: float, release_at: float | None, region: str) -> bool:
        if boost.region is not None and boost.region != region:
            return False
        start, end = boost.window(release_at, self._release_lead)
        return start <= now < end

    def _upcoming(self, catalog: Catalog) -> list[tuple[str, float]]:
        key = (id(catalog), catalog.version)
        if key != self._releases_key:
            self._releases = [
                (t.id, t.release_at) for t in catalog.titles.values() if t.release_at is not None
            ]
            self._releases_key = key
        return self._releases

    # -------------------------------------------------------------- boosts
    @property
    def boosts(self) -> tuple[Boost, ...]:
        return tuple(b for title_id in sorted(self._boosts) for b in self._boosts[title_id])

    def add_boost(self, boost: Boost) -> None:
        self._boosts[boost.title_id] = (*self._boosts.get(boost.title_id, ()), boost)

    def set_boosts(self, boosts: Iterable[Boost]) -> None:
        """Replace every boost (e.g. on a configuration reload)."""
        by_title: dict[str, tuple[Boost, ...]] = {}
        for b in boosts:
            by_title[b.title_id] = (*by_title.get(b.title_id, ()), b)
        self._boosts = by_title

    def remove_boosts(self, title_id: str) -> int:
        """Drop the title's boosts; returns how many there were."""
        return len(self._boosts.pop(title_id, ()))

    # -------------------------------------------------------------- upkeep
    def prune(self, now: float, catalog: Catalog, *, min_requests: float = 1e-3) -> int:
        """Forget counters decayed below ``min_requests``, titles ``catalog`` no longer
        knows, and boosts that have ended. Returns how many entries were dropped."""
        rate = self._rate
        dropped = 0
        for table in (*self._regions.values(), *self._objects.values()):
            for key in [k for k, c in table.items() if c.value_at(now, rate) < min_requests]:
                del table[key]
                dropped += 1
        for table in self._regions.values():
            for title_id in [t for t in table if catalog.get(t) is None]:
                del table[title_id]
                dropped += 1
        for title_id in [t for t in self._objects if catalog.get(t) is None]:
            dropped += len(self._objects.pop(title_id))
        for region in [r for r, t in self._regions.items() if not t]:
            del self._regions[region]
        for title_id in [t for t in self._objects if not self._objects[t]]:
            del self._objects[title_id]
        for title_id, boosts in list(self._boosts.items()):
            title = catalog.get(title_id)
            release_at = title.release_at if title is not None else None
            kept = tuple(b for b in boosts if b.window(release_at, self._release_lead)[1] > now)
            dropped += len(boosts) - len(kept)
            if kept:
                self._boosts[title_id] = kept
            else:
                del self._boosts[title_id]
        return dropped

    # -------------------------------------------------------------- soft state
    def to_json(self) -> bytes:
        """The state as JSON (schema ``oca.popularity``, version 1): counters and boosts,
        not the constructor's settings other than the half-life."""
        boosts: list[_BoostJSON] = []
        for b in self.boosts:
            item: _BoostJSON = {
                "title": b.title_id,
                "requests_per_day": b.requests_per_day,
                "factor": b.factor,
            }
            if b.lead_seconds is not None:
                item["lead_seconds"] = b.lead_seconds
            if b.starts_at is not None:
                item["starts_at"] = b.starts_at
            if b.until is not None:
                item["until"] = b.until
            if b.region is not None:
                item["region"] = b.region
            boosts.append(item)
        doc: _StateJSON = {
            "schema": POPULARITY_SCHEMA,
            "version": POPULARITY_VERSION,
            "half_life_seconds": self._half_life,
            "regions": {r: _counters_json(t) for r, t in sorted(self._regions.items())},
            "objects": {t: _counters_json(o) for t, o in sorted(self._objects.items())},
            "boosts": boosts,
        }
        return orjson.dumps(doc)

    @classmethod
    def from_json(
        cls,
        data: bytes,
        *,
        half_life_seconds: float | None = None,
        **settings: Unpack[PopularitySettings],
    ) -> Popularity:
        """Read what :meth:`to_json` wrote; raises :class:`PopularityError` naming the
        field on anything else. ``half_life_seconds`` (default: the saved one) and
        ``settings`` (the constructor's other keyword arguments) configure the result."""
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise PopularityError("", f"not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise PopularityError("", "expected a JSON object")
        allowed = {"schema", "version", "half_life_seconds", "regions", "objects", "boosts"}
        for key in doc:
            if key not in allowed:
                raise PopularityError(key, f"unknown field (allowed: {', '.join(sorted(allowed))})")
        if doc.get("schema") != POPULARITY_SCHEMA:
            raise PopularityError("schema", f"expected {POPULARITY_SCHEMA!r}")
        if doc.get("version") != POPULARITY_VERSION:
            raise PopularityError("version", f"expected {POPULARITY_VERSION}")
        saved = _field(doc, "", "half_life_seconds", (int, float))
        pop = cls(saved if half_life_seconds is None else half_life_seconds, **settings)
        for name, target in (("regions", pop._regions), ("objects", pop._objects)):
            tables = _field(doc, "", name, dict)
            for outer, table in tables.items():
                where = f"{name}.{outer}"
                if not isinstance(table, dict):
                    raise PopularityError(where, "expected an object")
                target[outer] = {k: _counter(v, f"{where}.{k}") for k, v in table.items()}
        for i, item in enumerate(_field(doc, "", "boosts", list)):
            pop.add_boost(_boost(item, f"boosts[{i}]"))
        return pop

    def save(self, path: str) -> None:
        """Write :meth:`to_json` to ``path`` atomically (temp file, fsync, rename)."""
        write_atomic(path, self.to_json(), prefix=".popularity-")

    @classmethod
    def load(
        cls,
        path: str,
        *,
        half_life_seconds: float | None = None,
        **settings: Unpack[PopularitySettings],
    ) -> Popularity:
        """Read a file :meth:`save` wrote (see :meth:`from_json`)."""
        with open(path, "rb") as f:
            data = f.read()
        return cls.from_json(data, half_life_seconds=half_life_seconds, **settings)


def _counters_json(table: Mapping[str, _Decayed]) -> dict[str, tuple[float, float]]:
    return {k: (c.value, c.at) for k, c in sorted(table.items()) if math.isfinite(c.at)}


def _counter(item: Any, where: str) -> _Decayed:
    if (
        not isinstance(item, list)
        or len(item) != 2
        or not all(_is_number(x) and math.isfinite(x) for x in item)
        or item[0] < 0
    ):
        raise PopularityError(where, f"expected [value >= 0, unix time], got {item!r}")
    return _Decayed(float(item[0]), float(item[1]))


def _boost(item: Any, where: str) -> Boost:
    if not isinstance(item, dict):
        raise PopularityError(where, "expected an object")
    allowed = {
        "title",
        "requests_per_day",
        "factor",
        "lead_seconds",
        "starts_at",
        "until",
        "region",
    }
    for key in item:
        if key not in allowed:
            raise PopularityError(f"{where}.{key}", "unknown field")
    try:
        return Boost(
            _field(item, where, "title", str),
            requests_per_day=_field(item, where, "requests_per_day", (int, float)),
            factor=_field(item, where, "factor", (int, float)),
            lead_seconds=item.get("lead_seconds"),
            starts_at=item.get("starts_at"),
            until=item.get("until"),
            region=item.get("region"),
        )
    except PopularityError as exc:
        if exc.field.startswith(where):
            raise
        raise PopularityError(f"{where}.{exc.field}", exc.detail) from None


def _field(doc: Mapping[str, Any], where: str, key: str, kind: type | tuple[type, ...]) -> Any:
    name = f"{where}.{key}" if where else key
    if key not in doc:
        raise PopularityError(name, "is missing")
    value = doc[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise PopularityError(name, f"wrong type: {type(value).__name__}")
    return value


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_number(name: str, value: object, *, lo: float = -math.inf, strict: bool = False) -> None:
    """Raise unless ``value`` is a finite number ``>= lo`` (``> lo`` when ``strict``)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not (value > lo if strict else value >= lo)
    ):
        bound = f" > {lo}" if strict else (f" >= {lo}" if lo > -math.inf else "")
        raise PopularityError(name, f"must be a finite number{bound}, got {value!r}")
