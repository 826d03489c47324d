"""What the demo's origin holds: the playable test-pattern title and a synthetic catalog.

The playable title is ``oca/media/pattern`` (60 s of ffmpeg test pattern in two video
renditions, audio and WebVTT subtitles, made by ``scripts/make_dash_title.py`` and
shipped with the package), so the demo needs no media tools at run time.

The synthetic titles fill out the catalog so the fill plan has something to split
across a site: each is a well-formed DASH package (an MPD with a ``SegmentTemplate``,
an init segment and numbered media segments per representation, WebVTT subtitles) of
a few hundred kilobytes. Their segment bytes are deterministic pseudo-random data of
the sizes the MPD's bandwidths imply, so the catalog records real sizes and checksums;
they are not meant to be played.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

PATTERN_SOURCE = Path(__file__).resolve().parent.parent / "media" / "pattern"
PATTERN_TITLE = "pattern"
SYNTHETIC_TITLES = 24
SEGMENT_SECONDS = 2
SEGMENTS = 3
REPRESENTATIONS = (("v1", 100_000, 640, 360), ("v2", 250_000, 1280, 720))  # id, bits/s, w, h
AUDIO = ("a1", 48_000)


def synthetic_title_id(n: int) -> str:
    return f"synth-{n:03d}"


def _blob(seed: str, size: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest() * 64
        counter += 1
    return bytes(out[:size])


def _synthetic_mpd() -> str:
    duration = SEGMENTS * SEGMENT_SECONDS
    template = (
        f'<SegmentTemplate timescale="1000" duration="{SEGMENT_SECONDS * 1000}" '
        'startNumber="1" initialization="$RepresentationID$/init.mp4" '
        'media="$RepresentationID$/seg-$Number%05d$.m4s"/>'
    )
    video = "\n".join(
        f'      <Representation id="{rid}" bandwidth="{bw}" width="{w}" height="{h}" '
        'codecs="avc1.64001f" mimeType="video/mp4"/>'
        for rid, bw, w, h in REPRESENTATIONS
    )
    aid, abw = AUDIO
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" profiles="urn:mpeg:dash:profile:isoff-live:2011"
     type="static" mediaPresentationDuration="PT{duration}S" minBufferTime="PT2S">
  <Period id="0" start="PT0S">
    <AdaptationSet contentType="video" segmentAlignment="true" mimeType="video/mp4">
      {template}
{video}
    </AdaptationSet>
    <AdaptationSet contentType="audio" lang="en" segmentAlignment="true" mimeType="audio/mp4">
      {template}
      <Representation id="{aid}" bandwidth="{abw}" codecs="mp4a.40.2" audioSamplingRate="48000"/>
    </AdaptationSet>
    <AdaptationSet contentType="text" lang="en" mimeType="text/vtt">
      <Representation id="sub-en" bandwidth="256"><BaseURL>subs/en.vtt</BaseURL></Representation>
    </AdaptationSet>
  </Period>
</MPD>
"""


def make_synthetic_title(titles_dir: Path, title_id: str) -> int:
    """Write one synthetic title under ``titles_dir/title_id``; returns its bytes."""
    base = titles_dir / title_id
    files: dict[str, bytes] = {"manifest.mpd": _synthetic_mpd().encode()}
    for rid, bw in (*((r[0], r[1]) for r in REPRESENTATIONS), AUDIO):
        files[f"{rid}/init.mp4"] = _blob(f"{title_id}/{rid}/init", 1200)
        for n in range(1, SEGMENTS + 1):
            files[f"{rid}/seg-{n:05d}.m4s"] = _blob(
                f"{title_id}/{rid}/{n}", bw * SEGMENT_SECONDS // 8
            )
    cues = ["WEBVTT", ""]
    for n in range(SEGMENTS):
        t0, t1 = n * SEGMENT_SECONDS, (n + 1) * SEGMENT_SECONDS
        cues += [f"00:00:{t0:02d}.000 --> 00:00:{t1:02d}.000", f"{title_id} cue {n + 1}", ""]
    files["subs/en.vtt"] = "\n".join(cues).encode()
    total = 0
    for rel, data in files.items():
        p = base / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        total += len(data)
    return total


def write_origin_tree(root: Path, synthetic: int = SYNTHETIC_TITLES) -> tuple[list[str], int]:
    """Lay out the origin's files under ``root`` (``root/titles/<id>/...``, object paths
    mirror URL paths); returns the title ids and the total bytes."""
    titles_dir = root / "titles"
    titles_dir.mkdir(parents=True, exist_ok=True)
    pattern = titles_dir / PATTERN_TITLE
    if pattern.exists():
        shutil.rmtree(pattern)
    shutil.copytree(PATTERN_SOURCE, pattern)
    total = sum(p.stat().st_size for p in pattern.iterdir())
    ids = [PATTERN_TITLE]
    for n in range(1, synthetic + 1):
        tid = synthetic_title_id(n)
        total += make_synthetic_title(titles_dir, tid)
        ids.append(tid)
    return ids, total
