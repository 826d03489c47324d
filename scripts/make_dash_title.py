#!/usr/bin/env python3
"""Generate the small test-pattern DASH title shipped in ``oca/media/pattern/``.

A real, playable MPEG-DASH package (ISO/IEC 23009-1, static MPD) made with ffmpeg from
synthetic sources, so tests and ``oca demo`` can play a real title in a real player
without any media tools installed:

- video: ffmpeg's ``testsrc2`` pattern, 60 s at 25 fps, two H.264 renditions
  (256x144 constrained baseline at 110 kbit/s, 384x216 main at 220 kbit/s, both 16:9
  with square pixels), a closed GOP of exactly 2 s and no scene-cut keyframes, so
  every 2 s segment starts with an IDR frame and the renditions are segment-aligned
  (bitstream switching works);
- audio: a 440 Hz sine that beeps once a second, AAC-LC mono;
- subtitles: one WebVTT file with a cue every 2 s, its own AdaptationSet whose
  Representation points at the file with a relative ``BaseURL``.

ffmpeg's dash muxer writes fMP4 segments and a ``SegmentTemplate`` with a
``SegmentTimeline`` and ``$Number$`` addressing; this script adds the subtitle
AdaptationSet and removes what depends on the machine or the moment (the generator
comment, ``ProgramInformation``, an empty ``ServiceDescription``), so a re-run gives
the same MPD and, with ffmpeg's bitexact flags and single-threaded x264, the same
segments for the same ffmpeg build (the whole title is about 2.8 MB).

Usage: ``python3 scripts/make_dash_title.py [OUTPUT_DIR]`` (default
``oca/media/pattern``); needs ``ffmpeg`` on PATH (Debian package ``ffmpeg``).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

DURATION_SECONDS = 60
FRAME_RATE = 25
SEGMENT_SECONDS = 2
AUDIO_RATE_HZ = 48000
AUDIO_BITRATE = "32k"
SUBTITLE_FILE = "subtitles-en.vtt"
MANIFEST = "manifest.mpd"
DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "oca" / "media" / "pattern"


@dataclass(frozen=True)
class VideoRendition:
    width: int
    height: int
    bitrate_kbits: int
    profile: str  # x264 profile name


RENDITIONS = (
    VideoRendition(256, 144, 110, "baseline"),
    VideoRendition(384, 216, 220, "main"),
)


def ffmpeg_command(ffmpeg: str, out_dir: Path) -> list[str]:
    gop = FRAME_RATE * SEGMENT_SECONDS
    biggest = max(RENDITIONS, key=lambda r: r.width)
    cmd = [
        ffmpeg,
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "lavfi",
        "-i",
        f"testsrc2=size={biggest.width}x{biggest.height}:rate={FRAME_RATE}"
        f":duration={DURATION_SECONDS}",
        "-f",
        "lavfi",
        "-i",
        f"sine=frequency=440:beep_factor=4:sample_rate={AUDIO_RATE_HZ}:duration={DURATION_SECONDS}",
        "-fflags",
        "+bitexact",
        "-map_metadata",
        "-1",
    ]
    for _ in RENDITIONS:
        cmd += ["-map", "0:v"]
    cmd += ["-map", "1:a"]
    cmd += [
        "-c:v",
        "libx264",
        "-preset",
        "medium",
        "-threads",
        "1",
        "-pix_fmt",
        "yuv420p",
        "-flags:v",
        "+bitexact",
        "-g",
        str(gop),
        "-keyint_min",
        str(gop),
        "-sc_threshold",
        "0",
        "-x264-params",
        "open-gop=0",
    ]
    for i, r in enumerate(RENDITIONS):
        cmd += [
            f"-filter:v:{i}",
            f"scale={r.width}:{r.height},setsar=1",
            f"-profile:v:{i}",
            r.profile,
            f"-b:v:{i}",
            f"{r.bitrate_kbits}k",
            f"-maxrate:v:{i}",
            f"{r.bitrate_kbits * 3 // 2}k",
            f"-bufsize:v:{i}",
            f"{r.bitrate_kbits * 2}k",
        ]
    cmd += [
        "-c:a",
        "aac",
        "-ac",
        "1",
        "-b:a",
        AUDIO_BITRATE,
        "-flags:a",
        "+bitexact",
        "-f",
        "dash",
        "-seg_duration",
        str(SEGMENT_SECONDS),
        "-use_template",
        "1",
        "-use_timeline",
        "1",
        "-adaptation_sets",
        "id=0,streams=v id=1,streams=a",
        "-init_seg_name",
        "init-$RepresentationID$.m4s",
        "-media_seg_name",
        "chunk-$RepresentationID$-$Number%05d$.m4s",
        str(out_dir / MANIFEST),
    ]
    return cmd


def _timestamp(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}.000"


def webvtt() -> str:
    """A cue every segment, naming the time span it covers."""
    lines = ["WEBVTT", ""]
    for n, start in enumerate(range(0, DURATION_SECONDS, SEGMENT_SECONDS), 1):
        end = start + SEGMENT_SECONDS
        lines += [str(n), f"{_timestamp(start)} --> {_timestamp(end)}"]
        lines += [f"Test pattern, {start} s to {end} s", ""]
    return "\n".join(lines)


SUBTITLE_ADAPTATION_SET = f"""\
\t\t<AdaptationSet id="2" contentType="text" mimeType="text/vtt" lang="en">
\t\t\t<Role schemeIdUri="urn:mpeg:dash:role:2011" value="subtitle" />
\t\t\t<Representation id="subtitles-en" bandwidth="256">
\t\t\t\t<BaseURL>{SUBTITLE_FILE}</BaseURL>
\t\t\t</Representation>
\t\t</AdaptationSet>
"""


def finish_manifest(text: str) -> str:
    """Add the subtitle AdaptationSet; drop the parts that vary between runs."""
    text = re.sub(r"<!--.*?-->\s*", "", text, flags=re.S)
    for element in ("ProgramInformation", "ServiceDescription"):
        text = re.sub(rf"\s*<{element}\b.*?</{element}>", "", text, flags=re.S)
    if text.count("\t</Period>") != 1:
        raise SystemExit("error: expected exactly one Period in ffmpeg's MPD")
    return text.replace("\t</Period>", SUBTITLE_ADAPTATION_SET + "\t</Period>")


def generate(out_dir: Path, ffmpeg: str) -> int:
    with tempfile.TemporaryDirectory(prefix="dash-title-") as tmp:
        work = Path(tmp)
        subprocess.run(ffmpeg_command(ffmpeg, work), check=True)
        manifest = work / MANIFEST
        manifest.write_text(finish_manifest(manifest.read_text()))
        (work / SUBTITLE_FILE).write_text(webvtt())
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.mkdir(parents=True)
        total = 0
        for f in sorted(work.iterdir()):
            shutil.copyfile(f, out_dir / f.name)
            total += f.stat().st_size
    count = len(list(out_dir.iterdir()))
    print(f"wrote {count} files ({total / 1e6:.2f} MB) to {out_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", nargs="?", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--ffmpeg", default="ffmpeg", help="the ffmpeg binary to run")
    args = parser.parse_args(argv)
    ffmpeg = shutil.which(args.ffmpeg)
    if ffmpeg is None:
        print(f"error: {args.ffmpeg} not found (Debian package ffmpeg)", file=sys.stderr)
        return 2
    return generate(args.output, ffmpeg)


if __name__ == "__main__":
    sys.exit(main())
