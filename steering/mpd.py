"""Every object a DASH player could request for a title, read from its MPD (pure).

Theory of operation
-------------------
A title is cached as files, so the catalog needs the exact set of URL paths an MPD
(ISO/IEC 23009-1, "MPEG-DASH") makes a player fetch: initialization segments, media
segments, index segments, subtitle files and whole-file renditions. :func:`parse_mpd`
walks the document the way a player resolves it and returns them as an :class:`MpdInfo`.

- **URLs** (§5.6). Each level (MPD, Period, AdaptationSet, Representation) may carry
  ``BaseURL`` elements; a relative one resolves against the level above, and the MPD's
  own URL is the base of the whole document (RFC 3986 §5.2 reference resolution). Of
  several alternatives at one level the first usable one counts (the one whose
  ``@serviceLocation`` is ``service_location`` when given, as a player following
  content steering would pick). Absolute ``http(s)`` URLs are usable when they point at
  the MPD's own origin or one of ``same_origins``; another host is an error, or with
  ``foreign="skip"`` the element is skipped and the reason recorded. Object paths are
  URL paths, percent-decoded, without query or fragment.
- **Segment information** (§5.3.9). ``SegmentBase``, ``SegmentList`` and
  ``SegmentTemplate`` may sit at the Period, AdaptationSet or Representation level; the
  lowest level that has one decides the addressing mode, and the same element at the
  levels above supplies defaults: attributes merge downwards, and child elements
  (``SegmentTimeline``, ``Initialization``, ``RepresentationIndex``, ``SegmentURL``)
  come from the lowest level that has them.
- **Templates** (§5.3.9.4.4). ``$RepresentationID$``, ``$Bandwidth$``, ``$Number$``,
  ``$Time$``, the width format ``%0<width>d`` and ``$$`` for a dollar sign. With a
  ``SegmentTimeline`` every ``S`` gives a start time ``@t`` (default: the end of the
  previous one, 0 for the first), a duration ``@d`` and ``@r`` repeats; ``r="-1"``
  repeats up to the next ``S@t`` or, on the last ``S``, to the end of the Period.
  Without a timeline, ``@duration`` gives ``ceil(period duration / (duration /
  timescale))`` segments numbered from ``@startNumber`` (capped by ``@endNumber``).
  Arithmetic on times is exact (:class:`fractions.Fraction`): a rounding error in a
  segment count would drop or invent the last segment.
- **Period timing** (§5.3.2.1). A Period lasts ``@duration``, or until the next
  Period's ``@start``, or (the last one) until ``MPD@mediaPresentationDuration``; a
  missing ``@start`` follows the previous Period's end (0 for the first).
- **Byte ranges** (``SegmentBase``, ``SegmentList@mediaRange``, ``Initialization@range``)
  address parts of a file that is already an object: the Representation's BaseURL.
- **Text**: an AdaptationSet whose content type is ``text`` (WebVTT, TTML, or fMP4 with
  ``wvtt``/``stpp``) yields ``subtitle`` objects, whether one sidecar file or segments.

Only on-demand (``type="static"``) presentations are enumerated; a live MPD's segment
list depends on the wall clock and is refused. The document is loaded by
:func:`steering.mpdxml.load_document` (no DTDs, bounded size). Counts are bounded by
``max_objects`` so a hostile ``S@r`` cannot exhaust memory.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal
from urllib.parse import unquote, urljoin, urlsplit

from steering.mpdsegments import (
    DEFAULT_MAX_OBJECTS,
    TimelineEntry,
    compile_template,
    expand_template,
    expand_timeline,
    origin_of,
    parse_duration,
    parse_uint,
    render_template,
)
from steering.mpdxml import (
    DEFAULT_MAX_MPD_BYTES,
    MPD_NAMESPACE,
    XLINK_NAMESPACE,
    MpdError,
    load_document,
    local_name,
)

__all__ = [
    "DEFAULT_MAX_OBJECTS",
    "MPD_NAMESPACE",
    "MpdError",
    "MpdInfo",
    "MpdObject",
    "ObjectKind",
    "RepresentationInfo",
    "SkippedElement",
    "TimelineEntry",
    "expand_template",
    "expand_timeline",
    "origin_of",
    "parse_duration",
    "parse_mpd",
]

ObjectKind = Literal["init", "media", "subtitle", "index", "file"]
Addressing = Literal["SegmentTemplate", "SegmentList", "SegmentBase", "BaseURL"]


_SEGMENT_INFO = ("SegmentBase", "SegmentList", "SegmentTemplate")
_XLINK_HREF = f"{{{XLINK_NAMESPACE}}}href"
_TEXT_CODECS = ("wvtt", "stpp")
_TEXT_MIMES = ("application/ttml+xml", "application/x-subrip")


@dataclass(frozen=True, slots=True)
class MpdObject:
    """One file a player may request: its absolute URL path and what it is."""

    path: str
    kind: ObjectKind


@dataclass(frozen=True, slots=True)
class RepresentationInfo:
    """One Representation as enumerated: its identity and its objects in play order."""

    period: str  # Period@id, or its 1-based position when it has none
    adaptation_set: str  # AdaptationSet@id, or its 1-based position
    id: str
    bandwidth: int
    mime_type: str
    content_type: str  # "video" | "audio" | "text" | "image" | "" (unknown)
    codecs: str
    lang: str
    addressing: Addressing
    init: str | None  # initialization segment path, if a separate file
    media: tuple[str, ...]  # media segment paths (or the single file) in order


@dataclass(frozen=True, slots=True)
class SkippedElement:
    """An element left out of the enumeration, and why."""

    where: str
    url: str
    reason: str


@dataclass(frozen=True, slots=True)
class MpdInfo:
    """What :func:`parse_mpd` found."""

    mpd_url: str
    duration_seconds: float | None  # MPD@mediaPresentationDuration
    periods: int
    objects: tuple[MpdObject, ...]  # unique by path, in document order
    representations: tuple[RepresentationInfo, ...]
    skipped: tuple[SkippedElement, ...]

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(o.path for o in self.objects)


def _uint(
    element: ET.Element, name: str, where: str, default: int | None = None, *, minimum: int = 0
) -> int:
    return parse_uint(element.get(name), f"{where}@{name}", default, minimum)


def _uint_attr(
    attrs: dict[str, str], name: str, where: str, default: int, *, minimum: int = 0
) -> int:
    return parse_uint(attrs.get(name), f"{where}@{name}", default, minimum)


# --------------------------------------------------------------------------- walking


@dataclass(frozen=True, slots=True)
class _SegmentInfo:
    mode: Addressing
    where: str
    attrs: dict[str, str]
    timeline: ET.Element | None
    initialization: ET.Element | None
    index: ET.Element | None
    segment_urls: tuple[ET.Element, ...]


@dataclass(frozen=True, slots=True)
class _Period:
    where: str
    label: str
    duration: Fraction | None  # seconds, None when it cannot be known


_Chain = tuple[tuple[str, str, ET.Element], ...]  # (where, local name, element) top down


class _Walker:
    def __init__(
        self,
        root: ET.Element,
        mpd_url: str,
        same_origins: Iterable[str],
        foreign: Literal["error", "skip"],
        service_location: str | None,
        max_objects: int,
    ) -> None:
        self.ns, _ = local_name(root.tag)
        self.mpd_url = mpd_url
        self.allowed: set[str] = set()
        if urlsplit(mpd_url).scheme:
            self.allowed.add(origin_of(mpd_url))
        for origin in same_origins:
            self.allowed.add(origin_of(origin))
        self.foreign = foreign
        self.service_location = service_location
        self.max_objects = max_objects
        self.objects: dict[str, ObjectKind] = {}
        self.representations: list[RepresentationInfo] = []
        self.skipped: list[SkippedElement] = []

    # -- helpers

    def q(self, name: str) -> str:
        return f"{{{self.ns}}}{name}" if self.ns else name

    def kids(self, element: ET.Element, name: str) -> list[ET.Element]:
        return element.findall(self.q(name))

    def kid(self, element: ET.Element, name: str, where: str) -> ET.Element | None:
        found = self.kids(element, name)
        if len(found) > 1:
            raise MpdError(f"{where}/{name}", f"appears {len(found)} times; at most once")
        return found[0] if found else None

    @staticmethod
    def label(element: ET.Element, position: int) -> str:
        ident = element.get("id")
        return f"id={ident}" if ident else str(position)

    def add(self, path: str, kind: ObjectKind, where: str) -> None:
        if path not in self.objects:
            if len(self.objects) >= self.max_objects:
                raise MpdError(where, f"more than {self.max_objects} objects")
            self.objects[path] = kind

    def problem(self, url: str) -> str | None:
        """Why ``url`` cannot be enumerated as an object here, or None."""
        parts = urlsplit(url)
        if not parts.scheme and not parts.netloc:
            return None
        try:
            origin = origin_of(url)
        except ValueError:
            return f"{url} is not an http(s) URL"
        if origin in self.allowed:
            return None
        known = ", ".join(sorted(self.allowed)) or "none (the MPD URL is a path)"
        return f"{url} is on another host ({origin}); enumerable origins: {known}"

    def refuse(self, where: str, url: str, reason: str) -> None:
        if self.foreign == "error":
            raise MpdError(where, reason)
        self.skipped.append(SkippedElement(where=where, url=url, reason=reason))

    def path_of(self, url: str, where: str) -> str | None:
        reason = self.problem(url)
        if reason is not None:
            self.refuse(where, url, reason)
            return None
        path = unquote(urlsplit(url).path) or "/"
        segments = path.split("/")
        if any(part in (".", "..") for part in segments) or "\x00" in path:
            # Percent-encoded dots are not dot segments for RFC 3986, but decoded they
            # would walk out of the title's directory on a filesystem.
            raise MpdError(where, f"{url} has a '.' or '..' segment or NUL once decoded")
        return path

    def base(self, element: ET.Element, parent: str, where: str) -> str | None:
        """The base URL at this level, or None when every alternative is foreign."""
        candidates = self.kids(element, "BaseURL")
        if not candidates:
            return parent
        if self.service_location is not None:
            candidates.sort(key=lambda b: b.get("serviceLocation") != self.service_location)
        reasons: list[str] = []
        for candidate in candidates:
            url = urljoin(parent, (candidate.text or "").strip())
            reason = self.problem(url)
            if reason is None:
                return url
            reasons.append(reason)
        self.refuse(f"{where}/BaseURL", (candidates[0].text or "").strip(), "; ".join(reasons))
        return None

    def no_xlink(self, element: ET.Element, where: str) -> None:
        if element.get(_XLINK_HREF) is not None:
            raise MpdError(f"{where}@xlink:href", "remote elements (xlink) are not supported")

    # -- document

    def walk(self, root: ET.Element) -> MpdInfo:
        if local_name(root.tag)[1] != "MPD":
            raise MpdError("MPD", f"root element is <{local_name(root.tag)[1]}>, not <MPD>")
        if self.ns not in ("", MPD_NAMESPACE):
            raise MpdError("MPD", f"namespace {self.ns!r} is not {MPD_NAMESPACE}")
        kind = root.get("type", "static")
        if kind == "dynamic":
            raise MpdError("MPD@type", "live MPDs are not supported")
        if kind != "static":
            raise MpdError("MPD@type", f"{kind!r} is neither static nor dynamic")
        total = root.get("mediaPresentationDuration")
        presentation = (
            None if total is None else parse_duration(total, "MPD@mediaPresentationDuration")
        )
        base = self.base(root, self.mpd_url, "MPD")
        periods = self.kids(root, "Period")
        if not periods:
            raise MpdError("MPD", "has no Period")
        timing = self.period_timing(periods, presentation)
        if base is not None:
            for element, period in zip(periods, timing, strict=True):
                self.period(element, period, base)
        return MpdInfo(
            mpd_url=self.mpd_url,
            duration_seconds=None if presentation is None else float(presentation),
            periods=len(periods),
            objects=tuple(MpdObject(path, kind) for path, kind in self.objects.items()),
            representations=tuple(self.representations),
            skipped=tuple(self.skipped),
        )

    def period_timing(
        self, periods: Sequence[ET.Element], presentation: Fraction | None
    ) -> list[_Period]:
        starts: list[Fraction | None] = []
        durations: list[Fraction | None] = []
        wheres: list[str] = []
        previous_end: Fraction | None = Fraction(0)
        for i, element in enumerate(periods):
            where = f"MPD/Period[{self.label(element, i + 1)}]"
            self.no_xlink(element, where)
            start_text, duration_text = element.get("start"), element.get("duration")
            start = (
                previous_end if start_text is None else parse_duration(start_text, f"{where}@start")
            )
            duration = (
                None
                if duration_text is None
                else parse_duration(duration_text, f"{where}@duration")
            )
            starts.append(start)
            durations.append(duration)
            wheres.append(where)
            previous_end = None if start is None or duration is None else start + duration
        for i, start in enumerate(starts):
            if durations[i] is not None or start is None:
                continue
            if i + 1 < len(starts):
                following = starts[i + 1]
                if following is not None:
                    if following <= start:
                        raise MpdError(
                            f"{wheres[i + 1]}@start",
                            f"{float(following)} s is not after the previous Period's start",
                        )
                    durations[i] = following - start
            elif presentation is not None:
                if presentation <= start:
                    raise MpdError(
                        "MPD@mediaPresentationDuration",
                        f"{float(presentation)} s ends before the last Period starts",
                    )
                durations[i] = presentation - start
        return [
            _Period(where=w, label=self.label(e, i + 1), duration=d)
            for i, (w, e, d) in enumerate(zip(wheres, periods, durations, strict=True))
        ]

    def segment_elements(
        self, element: ET.Element, where: str
    ) -> list[tuple[str, str, ET.Element]]:
        found = [
            (f"{where}/{name}", name, child)
            for name in _SEGMENT_INFO
            for child in self.kids(element, name)
        ]
        if len(found) > 1:
            names = " and ".join(name for _, name, _ in found)
            raise MpdError(where, f"has {names}; at most one kind of segment information")
        for at, _, child in found:
            self.no_xlink(child, at)
        return found

    def period(self, element: ET.Element, period: _Period, parent: str) -> None:
        base = self.base(element, parent, period.where)
        if base is None:
            return
        chain: _Chain = tuple(self.segment_elements(element, period.where))
        for i, aset in enumerate(self.kids(element, "AdaptationSet")):
            where = f"{period.where}/AdaptationSet[{self.label(aset, i + 1)}]"
            self.no_xlink(aset, where)
            aset_base = self.base(aset, base, where)
            if aset_base is None:
                continue
            aset_chain = chain + tuple(self.segment_elements(aset, where))
            for j, rep in enumerate(self.kids(aset, "Representation")):
                self.representation(
                    rep, aset, period, self.label(aset, i + 1), aset_chain, aset_base, where, j
                )

    def merged(self, chain: _Chain, where: str) -> _SegmentInfo | None:
        if not chain:
            return None
        mode = chain[-1][1]
        same = [(at, element) for at, name, element in chain if name == mode]
        attrs: dict[str, str] = {}
        timeline = initialization = index = None
        urls: tuple[ET.Element, ...] = ()
        for at, element in same:  # top down: the lowest level that has a child wins
            attrs.update(element.attrib)
            found = self.kid(element, "SegmentTimeline", at)
            timeline = timeline if found is None else found
            found = self.kid(element, "Initialization", at)
            initialization = initialization if found is None else found
            found = self.kid(element, "RepresentationIndex", at)
            index = index if found is None else found
            urls = tuple(self.kids(element, "SegmentURL")) or urls
        assert mode in _SEGMENT_INFO
        return _SegmentInfo(
            mode=mode,  # type: ignore[arg-type]
            where=same[-1][0],
            attrs=attrs,
            timeline=timeline,
            initialization=initialization,
            index=index,
            segment_urls=urls,
        )

    def representation(
        self,
        rep: ET.Element,
        aset: ET.Element,
        period: _Period,
        aset_label: str,
        chain: _Chain,
        parent: str,
        aset_where: str,
        position: int,
    ) -> None:
        rid = rep.get("id", "").strip()
        if not rid:
            raise MpdError(f"{aset_where}/Representation[{position + 1}]@id", "missing")
        where = f"{aset_where}/Representation[id={rid}]"
        bandwidth = _uint(rep, "bandwidth", where)
        base = self.base(rep, parent, where)
        if base is None:
            return
        mime = rep.get("mimeType") or aset.get("mimeType") or ""
        codecs = rep.get("codecs") or aset.get("codecs") or ""
        content_type = _content_type(
            aset.get("contentType") or rep.get("contentType"), mime, codecs
        )
        media_kind: ObjectKind = "subtitle" if content_type == "text" else "media"
        info = self.merged(chain + tuple(self.segment_elements(rep, where)), where)
        state = _RepState(self, where, rid, bandwidth)
        if info is None or info.mode == "SegmentBase":
            self.single_file(state, info, base, "subtitle" if content_type == "text" else "file")
        elif info.mode == "SegmentList":
            self.segment_list(state, info, base, media_kind)
        else:
            self.segment_template(state, info, base, media_kind, period)
        if state.dropped:
            return
        for path, kind in state.objects:
            self.add(path, kind, where)
        self.representations.append(
            RepresentationInfo(
                period=period.label,
                adaptation_set=aset_label,
                id=rid,
                bandwidth=bandwidth,
                mime_type=mime,
                content_type=content_type,
                codecs=codecs,
                lang=rep.get("lang") or aset.get("lang") or "",
                addressing="BaseURL" if info is None else info.mode,
                init=state.init,
                media=tuple(state.media),
            )
        )

    # -- addressing modes

    def single_file(
        self, state: _RepState, info: _SegmentInfo | None, base: str, kind: ObjectKind
    ) -> None:
        if base == self.mpd_url:
            raise MpdError(state.where, "has no BaseURL and no segment information")
        if urlsplit(base).path.endswith("/"):
            raise MpdError(
                state.where,
                f"its BaseURL {base} is a directory and it has no SegmentList or SegmentTemplate",
            )
        if info is not None:
            state.optional_source(info.initialization, base, "init", f"{info.where}/Initialization")
            state.optional_source(info.index, base, "index", f"{info.where}/RepresentationIndex")
        state.media_object(base, kind, state.where)

    def segment_list(
        self, state: _RepState, info: _SegmentInfo, base: str, media_kind: ObjectKind
    ) -> None:
        if not info.segment_urls:
            raise MpdError(info.where, "has no SegmentURL")
        if info.initialization is not None:
            at = f"{info.where}/Initialization"
            if info.initialization.get("sourceURL") is None:
                state.add(base, "file", at)  # a byte range of the Representation's file
            else:
                state.optional_source(info.initialization, base, "init", at)
        state.optional_source(info.index, base, "index", f"{info.where}/RepresentationIndex")
        for i, segment in enumerate(info.segment_urls):
            at = f"{info.where}/SegmentURL[{i + 1}]"
            media = segment.get("media")
            if media is None:
                state.media_object(base, "file", f"{at}@mediaRange")
            else:
                state.media_object(urljoin(base, media.strip()), media_kind, f"{at}@media")
            index = segment.get("index")
            if index is not None:
                state.add(urljoin(base, index.strip()), "index", f"{at}@index")

    def segment_template(
        self,
        state: _RepState,
        info: _SegmentInfo,
        base: str,
        media_kind: ObjectKind,
        period: _Period,
    ) -> None:
        attrs, where = info.attrs, info.where
        values: dict[str, str | int] = {"RepresentationID": state.rid, "Bandwidth": state.bandwidth}
        fixed = ("RepresentationID", "Bandwidth")
        varying = ("RepresentationID", "Bandwidth", "Number", "Time")
        init_template = attrs.get("initialization")
        if init_template is not None:
            at = f"{where}@initialization"
            parts = compile_template(init_template.strip(), at, fixed)
            state.add(urljoin(base, render_template(parts, values)), "init", at)
        elif info.initialization is not None:
            at = f"{where}/Initialization@sourceURL"
            source = info.initialization.get("sourceURL")
            if source is None:
                state.add(base, "file", at)
            else:
                parts = compile_template(source.strip(), at, fixed)
                state.add(urljoin(base, render_template(parts, values)), "init", at)
        if info.index is not None and info.index.get("sourceURL") is not None:
            at = f"{where}/RepresentationIndex@sourceURL"
            parts = compile_template(info.index.get("sourceURL", "").strip(), at, fixed)
            state.add(urljoin(base, render_template(parts, values)), "index", at)
        media_template = attrs.get("media")
        if media_template is None:
            raise MpdError(f"{where}@media", "missing")
        media_parts = compile_template(media_template.strip(), f"{where}@media", varying)
        index_template = attrs.get("index")
        index_parts = (
            None
            if index_template is None
            else compile_template(index_template.strip(), f"{where}@index", varying)
        )
        timescale = _uint_attr(attrs, "timescale", where, 1, minimum=1)
        start_number = _uint_attr(attrs, "startNumber", where, 1)
        offset = _uint_attr(attrs, "presentationTimeOffset", where, 0)
        end_number = attrs.get("endNumber")
        segments = self.template_segments(
            info, period, timescale, start_number, offset, state.where
        )
        if end_number is not None:
            last = _uint_attr(attrs, "endNumber", where, 0)
            segments = [s for s in segments if s[0] <= last]
        for number, time in segments:
            values["Number"] = number
            values["Time"] = time
            state.media_object(
                urljoin(base, render_template(media_parts, values)), media_kind, where
            )
            if index_parts is not None:
                state.add(
                    urljoin(base, render_template(index_parts, values)), "index", f"{where}@index"
                )

    def template_segments(
        self,
        info: _SegmentInfo,
        period: _Period,
        timescale: int,
        start_number: int,
        offset: int,
        rep_where: str,
    ) -> list[tuple[int, int]]:
        attrs, where = info.attrs, info.where
        end = None if period.duration is None else offset + period.duration * timescale
        if info.timeline is not None:
            entries = [
                TimelineEntry(
                    t=None if s.get("t") is None else _uint(s, "t", f"{where}/S[{i + 1}]"),
                    d=_uint(s, "d", f"{where}/S[{i + 1}]"),
                    r=_uint(s, "r", f"{where}/S[{i + 1}]", 0, minimum=-1),
                    n=None if s.get("n") is None else _uint(s, "n", f"{where}/S[{i + 1}]"),
                )
                for i, s in enumerate(self.kids(info.timeline, "S"))
            ]
            if not entries:
                raise MpdError(f"{where}/SegmentTimeline", "has no S element")
            return expand_timeline(
                entries,
                start_number=start_number,
                end=end,
                where=f"{where}/SegmentTimeline",
                limit=self.max_objects,
            )
        if "duration" not in attrs:
            return [(start_number, offset)]  # one segment for the whole Period
        duration = _uint_attr(attrs, "duration", where, 0, minimum=1)
        if period.duration is not None:
            count = math.ceil(period.duration * timescale / duration)
        elif "endNumber" in attrs:
            count = _uint_attr(attrs, "endNumber", where, 0) - start_number + 1
        else:
            raise MpdError(
                f"{period.where}@duration",
                f"unknown, and {rep_where} needs it to count segments of @duration",
            )
        if count > self.max_objects:
            raise MpdError(f"{where}@duration", f"more than {self.max_objects} segments")
        return [(start_number + i, offset + i * duration) for i in range(count)]


class _RepState:
    """Objects of one Representation, collected before they join the title's."""

    __slots__ = ("bandwidth", "dropped", "init", "media", "objects", "rid", "walker", "where")

    def __init__(self, walker: _Walker, where: str, rid: str, bandwidth: int) -> None:
        self.walker = walker
        self.where = where
        self.rid = rid
        self.bandwidth = bandwidth
        self.objects: list[tuple[str, ObjectKind]] = []
        self.init: str | None = None
        self.media: list[str] = []
        self.dropped = False

    def add(self, url: str, kind: ObjectKind, where: str) -> str | None:
        if self.dropped:
            return None
        path = self.walker.path_of(url, where)
        if path is None:
            self.dropped = True
            return None
        self.objects.append((path, kind))
        if kind == "init" and self.init is None:
            self.init = path
        return path

    def media_object(self, url: str, kind: ObjectKind, where: str) -> None:
        path = self.add(url, kind, where)
        if path is not None and (not self.media or self.media[-1] != path):
            self.media.append(path)

    def optional_source(
        self, element: ET.Element | None, base: str, kind: ObjectKind, where: str
    ) -> None:
        if element is None:
            return
        source = element.get("sourceURL")
        if source is not None:  # without one, a byte range of the base file
            self.add(urljoin(base, source.strip()), kind, f"{where}@sourceURL")


def _content_type(declared: str | None, mime: str, codecs: str) -> str:
    if declared:
        return declared.strip()
    major = mime.split("/", 1)[0].strip().lower()
    if major in ("video", "audio", "text", "image"):
        return major
    lowered = mime.lower()
    if lowered in _TEXT_MIMES:
        return "text"
    if lowered == "application/mp4" and codecs.split(".", 1)[0].strip() in _TEXT_CODECS:
        return "text"
    return ""


def parse_mpd(
    data: bytes,
    mpd_url: str,
    *,
    same_origins: Iterable[str] = (),
    foreign: Literal["error", "skip"] = "error",
    service_location: str | None = None,
    max_bytes: int = DEFAULT_MAX_MPD_BYTES,
    max_objects: int = DEFAULT_MAX_OBJECTS,
) -> MpdInfo:
    """Every object of the static MPD ``data`` fetched from ``mpd_url``.

    ``mpd_url`` is the MPD's URL path (``/titles/tos/manifest.mpd``) or its absolute
    http(s) URL; relative references resolve against it, and the objects' paths are
    absolute URL paths. ``same_origins`` lists further ``scheme://host[:port]`` whose
    absolute URLs count as this origin's. Raises :class:`MpdError`.
    """
    parts = urlsplit(mpd_url)
    if not parts.path.startswith("/") or (parts.scheme and parts.scheme not in ("http", "https")):
        raise MpdError("mpd_url", f"{mpd_url!r} is neither a URL path nor an http(s) URL")
    root = load_document(data, max_bytes=max_bytes).root
    try:
        walker = _Walker(root, mpd_url, same_origins, foreign, service_location, max_objects)
    except ValueError as exc:
        raise MpdError("same_origins", str(exc)) from None
    return walker.walk(root)
