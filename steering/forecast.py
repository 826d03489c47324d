"""Tomorrow's requests per segment, from yesterday's counts and the catalogue (pure).

Theory of operation
-------------------
A fill manifest carries a predicted popularity for every object it lists (expected
requests per day in the appliance's region, see docs/fill.md). Yesterday's request count
of each object is a poor predictor on its own: most segments of most titles were asked
for once or not at all, so per-object counts are mostly noise, and a segment nobody
reached yesterday gets no prediction even when its title is hot. Open Connect fills by
*title* popularity for the same reason. This module predicts per title and spreads the
prediction over the title's segments the way viewing sessions spread over them:

    predicted(t, s, k) = plays(t) * share(s) * survival(k)    for k < length(t)

- ``plays(t)``: yesterday's requests for the title's first segment, summed over its
  streams (a DASH or HLS player starts a play at the first segment of one stream).
- ``share(s)``: the share of first-segment requests that went to stream ``s`` (e.g. a
  rendition by bitrate), over all titles: the population's mix of devices and links.
- ``survival(k)``: the share of plays that reach segment ``k``, over all titles. Viewers
  abandon (most sessions are short: Yu et al., EuroSys 2006; Finamore et al., IMC 2011),
  so early segments are requested far more than late ones, and a title's later segments
  are worth keeping only for its hottest titles. Estimated as the requests for index
  ``k`` over the plays of titles longer than ``k`` (a play cannot reach a segment its
  title does not have), pooled over index bins that double in width (1, 1, 2, 4, 8...
  indices) so the sparse tail is not noise, and made non-increasing.

Every title the catalogue knows is a candidate, including segments nobody requested
yesterday; a title nobody played yesterday gets no prediction (a new release needs one
from elsewhere, e.g. its marketing forecast). :meth:`SegmentForecast.ranked` yields
predictions hottest first without enumerating the catalogue, so a manifest can stop at
the appliance's capacity.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T", bound=Hashable)  # title
S = TypeVar("S", bound=Hashable)  # stream within a title (rendition, language...)


@dataclass(frozen=True, slots=True)
class SegmentForecast(Generic[T, S]):
    """A fitted forecast (see the module docstring); build it with :func:`fit`."""

    plays: Mapping[T, float]  # title -> plays per day (titles played at least once)
    stream_share: Mapping[S, float]  # stream -> share of plays, summing to 1
    survival: tuple[float, ...]  # index -> share of plays reaching it; survival[0] == 1
    lengths: Mapping[T, int]  # title -> segments per stream

    def predict(self, title: T, stream: S, index: int) -> float:
        """Predicted requests per day for segment ``index`` of ``title``'s ``stream``."""
        if not 0 <= index < self.lengths.get(title, 0) or index >= len(self.survival):
            return 0.0
        share = self.stream_share.get(stream, 0.0)
        return self.plays.get(title, 0.0) * share * self.survival[index]

    def ranked(self) -> Iterator[tuple[float, T, S, int]]:
        """``(prediction, title, stream, index)`` for every segment with a prediction
        above zero, highest first; ties in a deterministic order (title, stream, index
        as given by the catalogue's iteration order)."""
        survival = self.survival
        heap: list[tuple[float, int, int, T, S]] = []
        order = 0
        for title, plays in self.plays.items():
            length = min(self.lengths.get(title, 0), len(survival))
            for stream, share in self.stream_share.items():
                value = plays * share * survival[0] if length else 0.0
                if value > 0:
                    heap.append((-value, order, 0, title, stream))
                    order += 1
        heapq.heapify(heap)
        while heap:
            neg, o, k, title, stream = heap[0]
            yield -neg, title, stream, k
            nxt = k + 1
            value = 0.0
            if nxt < min(self.lengths[title], len(survival)):
                value = self.plays[title] * self.stream_share[stream] * survival[nxt]
            if value > 0:
                heapq.heapreplace(heap, (-value, o, nxt, title, stream))
            else:
                heapq.heappop(heap)


def fit(
    counts: Mapping[tuple[T, S, int], float], lengths: Mapping[T, int]
) -> SegmentForecast[T, S]:
    """Fit the forecast to yesterday's ``counts`` (requests per (title, stream, segment
    index)) and the catalogue's ``lengths`` (segments per stream of each title).

    Counts for titles the catalogue does not know, or for indices past a title's length,
    are ignored (the catalogue is the truth about what exists).
    """
    plays: dict[T, float] = {}
    first: dict[S, float] = {}
    by_index: dict[int, float] = {}
    for (title, stream, index), n in counts.items():
        if not n > 0 or not 0 <= index < lengths.get(title, 0):
            continue
        by_index[index] = by_index.get(index, 0.0) + n
        if index == 0:
            plays[title] = plays.get(title, 0.0) + n
            first[stream] = first.get(stream, 0.0) + n
    total = sum(first.values())
    if total <= 0:
        return SegmentForecast({}, {}, (), dict(lengths))
    share = {s: n / total for s, n in sorted(first.items(), key=lambda sn: repr(sn[0]))}
    horizon = max(lengths[t] for t in plays)
    # plays of titles longer than k, for every k < horizon
    ending = [0.0] * (horizon + 1)
    for t, n in plays.items():
        ending[lengths[t]] += n
    at_least: list[float] = []
    remaining = sum(plays.values())
    for k in range(horizon):
        at_least.append(remaining)
        remaining -= ending[k + 1]
    survival: list[float] = []
    lo, width = 0, 1
    while lo < horizon:
        hi = min(horizon, lo + width)
        reached = sum(by_index.get(k, 0.0) for k in range(lo, hi))
        exposed = sum(at_least[lo:hi])
        rate = reached / exposed if exposed > 0 else 0.0
        survival.extend([rate] * (hi - lo))
        lo, width = hi, (width * 2 if lo >= 1 else 1)
    survival[0] = 1.0
    for k in range(1, len(survival)):
        survival[k] = min(survival[k], survival[k - 1])
    while survival and survival[-1] <= 0:
        survival.pop()
    return SegmentForecast(plays, share, tuple(survival), dict(lengths))
