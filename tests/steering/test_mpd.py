"""steering.mpd: every addressing mode of real-world MPDs, errors that name the element,
and properties of SegmentTimeline expansion."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steering.mpd import (
    MpdError,
    TimelineEntry,
    expand_template,
    expand_timeline,
    parse_duration,
    parse_mpd,
)

MPD_URL = "/titles/tos/manifest.mpd"
NS = 'xmlns="urn:mpeg:dash:schema:mpd:2011"'


def mpd(body: str, attrs: str = 'mediaPresentationDuration="PT10S"') -> bytes:
    return (
        f'<?xml version="1.0" encoding="utf-8"?>\n<MPD {NS} type="static" {attrs}>\n'
        f"{body}\n</MPD>\n"
    ).encode()


def kinds(data: bytes, url: str = MPD_URL, **kwargs: object) -> dict[str, str]:
    return {o.path: o.kind for o in parse_mpd(data, url, **kwargs).objects}  # type: ignore[arg-type]


def error_of(data: bytes, url: str = MPD_URL, **kwargs: object) -> MpdError:
    with pytest.raises(MpdError) as info:
        parse_mpd(data, url, **kwargs)  # type: ignore[arg-type]
    return info.value


# --------------------------------------------------------------------------- samples

# What ffmpeg's dash muxer writes (-use_template 1 -use_timeline 1), tabs and all.
FFMPEG_MPD = b"""<?xml version="1.0" encoding="utf-8"?>
<MPD xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
\txmlns="urn:mpeg:dash:schema:mpd:2011"
\txmlns:xlink="http://www.w3.org/1999/xlink"
\txsi:schemaLocation="urn:mpeg:DASH:schema:MPD:2011 http://standards.iso.org/ittf/PubliclyAvailableStandards/MPEG-DASH_schema_files/DASH-MPD.xsd"
\tprofiles="urn:mpeg:dash:profile:isoff-live:2011"
\ttype="static"
\tmediaPresentationDuration="PT21.3S"
\tmaxSegmentDuration="PT4.0S"
\tminBufferTime="PT8.0S">
\t<ProgramInformation>
\t</ProgramInformation>
\t<ServiceDescription id="0">
\t</ServiceDescription>
\t<Period id="0" start="PT0.0S">
\t\t<AdaptationSet id="0" contentType="video" startWithSAP="1" segmentAlignment="true" bitstreamSwitching="true" frameRate="24/1" maxWidth="1280" maxHeight="720" par="16:9" lang="und">
\t\t\t<Representation id="0" mimeType="video/mp4" codecs="avc1.64001f" bandwidth="3000000" width="1280" height="720" sar="1:1">
\t\t\t\t<SegmentTemplate timescale="12288" initialization="init-stream$RepresentationID$.m4s" media="chunk-stream$RepresentationID$-$Number%05d$.m4s" startNumber="1">
\t\t\t\t\t<SegmentTimeline>
\t\t\t\t\t\t<S t="0" d="49152" r="4" />
\t\t\t\t\t\t<S d="15974" />
\t\t\t\t\t</SegmentTimeline>
\t\t\t\t</SegmentTemplate>
\t\t\t</Representation>
\t\t\t<Representation id="1" mimeType="video/mp4" codecs="avc1.64001e" bandwidth="1200000" width="854" height="480" sar="1:1">
\t\t\t\t<SegmentTemplate timescale="12288" initialization="init-stream$RepresentationID$.m4s" media="chunk-stream$RepresentationID$-$Number%05d$.m4s" startNumber="1">
\t\t\t\t\t<SegmentTimeline>
\t\t\t\t\t\t<S t="0" d="49152" r="4" />
\t\t\t\t\t\t<S d="15974" />
\t\t\t\t\t</SegmentTimeline>
\t\t\t\t</SegmentTemplate>
\t\t\t</Representation>
\t\t</AdaptationSet>
\t\t<AdaptationSet id="1" contentType="audio" startWithSAP="1" segmentAlignment="true" bitstreamSwitching="true" lang="eng">
\t\t\t<Representation id="2" mimeType="audio/mp4" codecs="mp4a.40.2" bandwidth="128000" audioSamplingRate="48000">
\t\t\t\t<AudioChannelConfiguration schemeIdUri="urn:mpeg:dash:23003:3:audio_channel_configuration:2011" value="2" />
\t\t\t\t<SegmentTemplate timescale="48000" initialization="init-stream$RepresentationID$.m4s" media="chunk-stream$RepresentationID$-$Number%05d$.m4s" startNumber="1">
\t\t\t\t\t<SegmentTimeline>
\t\t\t\t\t\t<S t="0" d="192512" />
\t\t\t\t\t\t<S d="191488" />
\t\t\t\t\t\t<S d="192512" r="2" />
\t\t\t\t\t\t<S d="54400" />
\t\t\t\t\t</SegmentTimeline>
\t\t\t\t</SegmentTemplate>
\t\t\t</Representation>
\t\t</AdaptationSet>
\t</Period>
</MPD>
"""  # noqa: E501


def test_ffmpeg_segment_timeline() -> None:
    info = parse_mpd(FFMPEG_MPD, MPD_URL)
    found = {o.path: o.kind for o in info.objects}
    video = [f"/titles/tos/chunk-stream0-{n:05d}.m4s" for n in range(1, 7)]
    audio = [f"/titles/tos/chunk-stream2-{n:05d}.m4s" for n in range(1, 7)]
    assert found["/titles/tos/init-stream0.m4s"] == "init"
    assert all(found[p] == "media" for p in video + audio)
    assert len(info.objects) == 3 * 7
    assert info.objects[0].path == "/titles/tos/init-stream0.m4s"  # document order
    assert info.duration_seconds == pytest.approx(21.3)
    (rep0, rep1, rep2) = info.representations
    assert (rep0.id, rep0.bandwidth, rep0.codecs, rep0.content_type) == (
        "0",
        3_000_000,
        "avc1.64001f",
        "video",
    )
    assert rep0.mime_type == "video/mp4" and rep0.addressing == "SegmentTemplate"
    assert rep0.media == tuple(video) and rep0.init == "/titles/tos/init-stream0.m4s"
    assert rep1.id == "1" and rep2.content_type == "audio" and rep2.lang == "eng"
    assert rep2.media == tuple(audio)


def test_time_template_with_open_ended_repeat() -> None:
    # r="-1" on the last S repeats to the end of the Period (10 s at timescale 1000),
    # counted from presentationTimeOffset.
    body = """<Period duration="PT10S"><AdaptationSet mimeType="video/mp4">
      <SegmentTemplate timescale="1000" presentationTimeOffset="500" media="v/$Time$.m4s"
                       initialization="v/init.mp4">
        <SegmentTimeline><S t="500" d="3000" r="-1"/></SegmentTimeline>
      </SegmentTemplate>
      <Representation id="v" bandwidth="1"/></AdaptationSet></Period>"""
    info = parse_mpd(mpd(body), MPD_URL)
    assert info.paths == (
        "/titles/tos/v/init.mp4",
        "/titles/tos/v/500.m4s",
        "/titles/tos/v/3500.m4s",
        "/titles/tos/v/6500.m4s",
        "/titles/tos/v/9500.m4s",
    )


def test_open_ended_repeat_up_to_next_s_and_number_restart() -> None:
    body = """<Period><AdaptationSet mimeType="audio/mp4">
      <SegmentTemplate timescale="10" startNumber="7" media="a-$Number$-$Time%06d$.m4s">
        <SegmentTimeline>
          <S t="0" d="4" r="-1"/>
          <S t="10" d="5" n="100"/>
          <S d="5"/>
        </SegmentTimeline>
      </SegmentTemplate>
      <Representation id="a" bandwidth="1"/></AdaptationSet></Period>"""
    assert list(kinds(mpd(body))) == [
        "/titles/tos/a-7-000000.m4s",
        "/titles/tos/a-8-000004.m4s",
        "/titles/tos/a-9-000008.m4s",
        "/titles/tos/a-100-000010.m4s",
        "/titles/tos/a-101-000015.m4s",
    ]


def test_duration_template_counts_with_ceil_and_multi_period() -> None:
    # Period 1: start 0, next Period starts at 7 s -> 7 s / 2 s = 4 segments (ceil).
    # Period 2: 7 s .. 10.5 s (mediaPresentationDuration) -> 3.5 s / 2 s = 2 segments.
    body = """<Period id="p1"><AdaptationSet mimeType="video/mp4">
      <SegmentTemplate timescale="90000" duration="180000" startNumber="0"
                       initialization="$RepresentationID$/p1/init.mp4"
                       media="$RepresentationID$/p1/$Number$.m4s"/>
      <Representation id="v" bandwidth="1"/></AdaptationSet></Period>
    <Period id="p2" start="PT7S"><AdaptationSet mimeType="video/mp4">
      <SegmentTemplate duration="2" media="$RepresentationID$/p2/$Number$.m4s"/>
      <Representation id="v" bandwidth="1"/></AdaptationSet></Period>"""
    found = kinds(mpd(body, 'mediaPresentationDuration="PT10.5S"'))
    assert list(found) == [
        "/titles/tos/v/p1/init.mp4",
        *(f"/titles/tos/v/p1/{n}.m4s" for n in range(4)),
        "/titles/tos/v/p2/1.m4s",
        "/titles/tos/v/p2/2.m4s",
    ]


def test_period_duration_chain_and_end_number() -> None:
    # Period 2 has no @start: it follows Period 1's @duration. endNumber caps the count.
    body = """<Period duration="PT4S"><AdaptationSet mimeType="video/mp4">
      <SegmentTemplate duration="1" media="a$Number$.m4s" endNumber="2"/>
      <Representation id="v" bandwidth="1"/></AdaptationSet></Period>
    <Period><AdaptationSet mimeType="video/mp4">
      <SegmentTemplate duration="1" media="b$Number$.m4s"/>
      <Representation id="v" bandwidth="1"/></AdaptationSet></Period>"""
    found = kinds(mpd(body, 'mediaPresentationDuration="PT7S"'))
    assert list(found) == [
        "/titles/tos/a1.m4s",
        "/titles/tos/a2.m4s",
        "/titles/tos/b1.m4s",
        "/titles/tos/b2.m4s",
        "/titles/tos/b3.m4s",
    ]


def test_template_inheritance_merges_attributes_down() -> None:
    # Period gives timescale and initialization, AdaptationSet the media and timeline,
    # one Representation overrides startNumber, another its own timeline.
    body = """<Period>
      <SegmentTemplate timescale="1000" initialization="$RepresentationID$/init-$Bandwidth$.mp4"/>
      <AdaptationSet mimeType="video/mp4">
        <SegmentTemplate media="$RepresentationID$/$Number%03d$-$Bandwidth%08d$.m4s">
          <SegmentTimeline><S d="2000" r="1"/></SegmentTimeline>
        </SegmentTemplate>
        <Representation id="lo" bandwidth="500000"/>
        <Representation id="hi" bandwidth="2500000">
          <SegmentTemplate startNumber="10"/>
        </Representation>
        <Representation id="mid" bandwidth="1000000">
          <SegmentTemplate><SegmentTimeline><S d="1000"/></SegmentTimeline></SegmentTemplate>
        </Representation>
      </AdaptationSet></Period>"""
    found = kinds(mpd(body))
    assert list(found) == [
        "/titles/tos/lo/init-500000.mp4",
        "/titles/tos/lo/001-00500000.m4s",
        "/titles/tos/lo/002-00500000.m4s",
        "/titles/tos/hi/init-2500000.mp4",
        "/titles/tos/hi/010-02500000.m4s",
        "/titles/tos/hi/011-02500000.m4s",
        "/titles/tos/mid/init-1000000.mp4",
        "/titles/tos/mid/001-01000000.m4s",
    ]


def test_dollar_escape_and_initialization_element() -> None:
    body = """<Period><AdaptationSet mimeType="video/mp4">
      <SegmentTemplate media="cost$$-$Number$.m4s">
        <Initialization sourceURL="$RepresentationID$-init.mp4"/>
        <RepresentationIndex sourceURL="$RepresentationID$.sidx"/>
      </SegmentTemplate>
      <Representation id="v" bandwidth="1"/></AdaptationSet></Period>"""
    found = kinds(mpd(body))
    assert found == {
        "/titles/tos/v-init.mp4": "init",
        "/titles/tos/v.sidx": "index",
        "/titles/tos/cost$-1.m4s": "media",  # no timeline, no duration: one segment
    }


def test_base_url_resolution_at_every_level() -> None:
    body = """<BaseURL>content/</BaseURL>
    <Period><BaseURL>p1/</BaseURL>
      <AdaptationSet mimeType="video/mp4"><BaseURL>/titles/tos/content/video/</BaseURL>
        <SegmentTemplate media="$Number$.m4s" duration="5"/>
        <Representation id="v1" bandwidth="1"><BaseURL>v1/</BaseURL></Representation>
        <Representation id="v2" bandwidth="1"><BaseURL>../v2/</BaseURL></Representation>
      </AdaptationSet>
      <AdaptationSet mimeType="audio/mp4">
        <SegmentTemplate media="a/$Number$.m4s" duration="5"/>
        <Representation id="a" bandwidth="1"/>
      </AdaptationSet></Period>"""
    assert list(kinds(mpd(body))) == [
        "/titles/tos/content/video/v1/1.m4s",
        "/titles/tos/content/video/v1/2.m4s",
        "/titles/tos/content/v2/1.m4s",
        "/titles/tos/content/v2/2.m4s",
        "/titles/tos/content/p1/a/1.m4s",
        "/titles/tos/content/p1/a/2.m4s",
    ]


def test_absolute_urls_same_origin_foreign_and_skip() -> None:
    body = """<BaseURL>http://origin:8000/titles/tos/</BaseURL>
    <Period><AdaptationSet mimeType="video/mp4">
      <Representation id="v" bandwidth="1"><BaseURL>v.mp4</BaseURL><SegmentBase/></Representation>
    </AdaptationSet>
    <AdaptationSet mimeType="audio/mp4">
      <Representation id="a" bandwidth="1"><BaseURL>https://cdn.example/a.mp4</BaseURL></Representation>
    </AdaptationSet></Period>"""
    data = mpd(body)
    url = "http://ORIGIN:8000/titles/tos/manifest.mpd"
    err = error_of(data, url)
    assert err.where.endswith("Representation[id=a]/BaseURL")
    assert "https://cdn.example:443" in err.detail
    info = parse_mpd(data, url, foreign="skip")
    assert info.paths == ("/titles/tos/v.mp4",)
    (skipped,) = info.skipped
    assert skipped.url == "https://cdn.example/a.mp4" and "another host" in skipped.reason
    assert [r.id for r in info.representations] == ["v"]
    # A path-only MPD URL accepts absolute URLs of the origins it is told about.
    assert kinds(data, MPD_URL, same_origins=["http://origin:8000"], foreign="skip") == {
        "/titles/tos/v.mp4": "file"
    }
    assert error_of(data, MPD_URL).where == "MPD/BaseURL"


def test_service_location_picks_the_base_url() -> None:
    body = """<BaseURL serviceLocation="a">http://a.example/x/</BaseURL>
    <BaseURL serviceLocation="b">http://b.example/y/</BaseURL>
    <Period><AdaptationSet mimeType="video/mp4">
      <Representation id="v" bandwidth="1"><BaseURL>v.mp4</BaseURL></Representation>
    </AdaptationSet></Period>"""
    origins = ["http://a.example", "http://b.example"]
    assert kinds(mpd(body), same_origins=origins) == {"/x/v.mp4": "file"}
    assert kinds(mpd(body), same_origins=origins, service_location="b") == {"/y/v.mp4": "file"}
    # A foreign first alternative falls through to a usable one.
    assert kinds(mpd(body), same_origins=origins[1:]) == {"/y/v.mp4": "file"}


def test_segment_list() -> None:
    body = """<Period><AdaptationSet mimeType="video/mp4">
      <Representation id="v" bandwidth="1"><BaseURL>v/</BaseURL>
        <SegmentList timescale="1000" duration="4000">
          <Initialization sourceURL="init.mp4"/>
          <SegmentURL media="s1.m4s"/>
          <SegmentURL media="s2.m4s" index="s2.sidx"/>
          <SegmentURL media="s2.m4s" mediaRange="100-199"/>
        </SegmentList>
      </Representation></AdaptationSet>
    <AdaptationSet mimeType="audio/mp4">
      <Representation id="a" bandwidth="1"><BaseURL>a.mp4</BaseURL>
        <SegmentList><Initialization range="0-99"/>
          <SegmentURL mediaRange="100-499"/><SegmentURL mediaRange="500-999"/>
        </SegmentList>
      </Representation></AdaptationSet></Period>"""
    info = parse_mpd(mpd(body), MPD_URL)
    assert {o.path: o.kind for o in info.objects} == {
        "/titles/tos/v/init.mp4": "init",
        "/titles/tos/v/s1.m4s": "media",
        "/titles/tos/v/s2.m4s": "media",
        "/titles/tos/v/s2.sidx": "index",
        "/titles/tos/a.mp4": "file",
    }
    video, audio = info.representations
    assert video.addressing == "SegmentList"
    assert video.media == ("/titles/tos/v/s1.m4s", "/titles/tos/v/s2.m4s")
    assert audio.media == ("/titles/tos/a.mp4",)


def test_segment_list_inherited_from_adaptation_set() -> None:
    body = """<Period><AdaptationSet mimeType="video/mp4">
      <SegmentList><Initialization sourceURL="init.mp4"/></SegmentList>
      <Representation id="v" bandwidth="1"><BaseURL>v/</BaseURL>
        <SegmentList><SegmentURL media="1.m4s"/></SegmentList>
      </Representation></AdaptationSet></Period>"""
    assert kinds(mpd(body)) == {"/titles/tos/v/init.mp4": "init", "/titles/tos/v/1.m4s": "media"}


def test_segment_base_single_file() -> None:
    body = """<Period><AdaptationSet mimeType="video/mp4" contentType="video">
      <Representation id="v720" bandwidth="3000000"><BaseURL>v720.mp4</BaseURL>
        <SegmentBase indexRange="850-1233"><Initialization range="0-849"/></SegmentBase>
      </Representation>
      <Representation id="v480" bandwidth="1000000"><BaseURL>v480%20main.mp4</BaseURL>
        <SegmentBase><RepresentationIndex sourceURL="v480.sidx"/></SegmentBase>
      </Representation></AdaptationSet></Period>"""
    info = parse_mpd(mpd(body), MPD_URL)
    assert {o.path: o.kind for o in info.objects} == {
        "/titles/tos/v720.mp4": "file",
        "/titles/tos/v480.sidx": "index",
        "/titles/tos/v480 main.mp4": "file",  # percent-decoded
    }
    assert info.representations[0].addressing == "SegmentBase"


def test_subtitles_sidecar_and_segmented() -> None:
    body = """<Period>
      <AdaptationSet contentType="text" mimeType="text/vtt" lang="en">
        <Representation id="en" bandwidth="256"><BaseURL>subs/en.vtt</BaseURL></Representation>
      </AdaptationSet>
      <AdaptationSet mimeType="application/ttml+xml" lang="de">
        <Representation id="de" bandwidth="256"><BaseURL>subs/de.ttml</BaseURL></Representation>
      </AdaptationSet>
      <AdaptationSet mimeType="application/mp4" codecs="stpp" lang="fr">
        <SegmentTemplate timescale="1000" duration="4000" initialization="subs/fr/init.mp4"
                         media="subs/fr/$Number$.m4s"/>
        <Representation id="fr" bandwidth="256"/>
      </AdaptationSet></Period>"""
    info = parse_mpd(mpd(body, 'mediaPresentationDuration="PT6S"'), MPD_URL)
    assert {o.path: o.kind for o in info.objects} == {
        "/titles/tos/subs/en.vtt": "subtitle",
        "/titles/tos/subs/de.ttml": "subtitle",
        "/titles/tos/subs/fr/init.mp4": "init",
        "/titles/tos/subs/fr/1.m4s": "subtitle",
        "/titles/tos/subs/fr/2.m4s": "subtitle",
    }
    assert [r.content_type for r in info.representations] == ["text"] * 3
    assert [r.lang for r in info.representations] == ["en", "de", "fr"]


def test_unique_objects_across_periods_and_no_namespace() -> None:
    body = """<Period duration="PT2S"><AdaptationSet mimeType="video/mp4">
      <SegmentTemplate duration="2" initialization="init.mp4" media="a$Number$.m4s"/>
      <Representation id="v" bandwidth="1"/></AdaptationSet></Period>
    <Period duration="PT2S"><AdaptationSet mimeType="video/mp4">
      <SegmentTemplate duration="2" initialization="init.mp4" media="b$Number$.m4s"/>
      <Representation id="v" bandwidth="1"/></AdaptationSet></Period>"""
    data = mpd(body).replace(NS.encode(), b"")
    info = parse_mpd(data, MPD_URL)
    assert info.paths == ("/titles/tos/init.mp4", "/titles/tos/a1.m4s", "/titles/tos/b1.m4s")
    assert info.periods == 2 and len(info.representations) == 2


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("PT1H2M3.5S", Fraction(7447, 2)),
        ("P1DT2H", Fraction(93600)),
        ("PT0S", Fraction(0)),
        ("PT10S", Fraction(10)),
        ("PT0.04S", Fraction(1, 25)),
        ("P0Y0M0DT0H3M30.000S", Fraction(210)),
        ("PT1.5M", Fraction(90)),
        ("P2D", Fraction(172800)),
    ],
)
def test_parse_duration(text: str, seconds: Fraction) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "P", "PT", "1H", "PT1H2", "-PT1S", "P1Y", "P1M", "PT1S2M"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(MpdError) as info:
        parse_duration(text, "Period@duration")
    assert info.value.where == "Period@duration"


# --------------------------------------------------------------------------- refusals

VIDEO = """<Period><AdaptationSet mimeType="video/mp4">{}
  <Representation id="v" bandwidth="1"/></AdaptationSet></Period>"""
WHERE = "MPD/Period[1]/AdaptationSet[1]/SegmentTemplate"


def test_live_mpd_refused() -> None:
    data = mpd(VIDEO.format(""), 'type="dynamic"').replace(b'type="static" ', b"")
    err = error_of(data)
    assert (err.where, err.detail) == ("MPD@type", "live MPDs are not supported")


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static">&lol3;</MPD>"""

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE MPD [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static"><BaseURL>&xxe;</BaseURL></MPD>"""


@pytest.mark.parametrize(
    "data",
    [BILLION_LAUGHS, XXE, BILLION_LAUGHS.decode().replace("1.0", "1.0", 1).encode("utf-16")],
)
def test_dtd_and_entities_refused(data: bytes) -> None:
    err = error_of(data)
    assert err.where == "MPD" and "DOCTYPE" in err.detail


def test_size_cap_and_malformed_xml() -> None:
    data = mpd(VIDEO.format(""))
    assert "limit" in error_of(data, max_bytes=len(data) - 1).detail
    assert "not well-formed" in error_of(b"<MPD><Period></MPD>").detail
    assert "not <MPD>" in error_of(b"<HTML/>").detail


@pytest.mark.parametrize(
    ("segment_info", "where", "words"),
    [
        ('<SegmentTemplate duration="1"/>', f"{WHERE}@media", "missing"),
        ('<SegmentTemplate media="$Foo$"/>', f"{WHERE}@media", "not a template identifier"),
        ('<SegmentTemplate media="a$Number.m4s"/>', f"{WHERE}@media", "unpaired"),
        (
            '<SegmentTemplate media="$Number$" initialization="$Number$.mp4"/>',
            f"{WHERE}@initialization",
            "not allowed",
        ),
        ('<SegmentTemplate media="$RepresentationID%05d$"/>', f"{WHERE}@media", "no format"),
        (
            '<SegmentTemplate media="$Number$"><SegmentTimeline><S d="0"/></SegmentTimeline>'
            "</SegmentTemplate>",
            f"{WHERE}/SegmentTimeline/S[1]@d",
            "positive",
        ),
        (
            '<SegmentTemplate media="$Number$"><SegmentTimeline><S t="5" d="1"/><S t="3" d="1"/>'
            "</SegmentTimeline></SegmentTemplate>",
            f"{WHERE}/SegmentTimeline/S[2]@t",
            "does not follow",
        ),
        (
            '<SegmentTemplate media="$Number$" timescale="x" duration="1"/>',
            f"{WHERE}@timescale",
            "not an integer",
        ),
        ("<SegmentList/>", "MPD/Period[1]/AdaptationSet[1]/SegmentList", "no SegmentURL"),
        (
            '<SegmentList/><SegmentTemplate media="x"/>',
            "MPD/Period[1]/AdaptationSet[1]",
            "at most one kind",
        ),
    ],
)
def test_errors_name_the_element(segment_info: str, where: str, words: str) -> None:
    err = error_of(mpd(VIDEO.format(segment_info)))
    assert err.where == where
    assert words in err.detail


def test_open_ended_repeat_needs_period_duration() -> None:
    body = VIDEO.format(
        '<SegmentTemplate media="$Number$"><SegmentTimeline><S d="1" r="-1"/>'
        "</SegmentTimeline></SegmentTemplate>"
    )
    err = error_of(mpd(body, ""))
    assert err.where == f"{WHERE}/SegmentTimeline/S[1]@r" and "unknown" in err.detail
    # the same with a known Period duration works
    assert len(kinds(mpd(body, 'mediaPresentationDuration="PT3S"'))) == 3


def test_duration_template_needs_period_duration() -> None:
    err = error_of(mpd(VIDEO.format('<SegmentTemplate media="$Number$" duration="2"/>'), ""))
    assert err.where == "MPD/Period[1]@duration"


def test_representation_without_segments_or_file() -> None:
    body = '<Period><AdaptationSet><Representation id="v" bandwidth="1"/></AdaptationSet></Period>'
    err = error_of(mpd(body))
    assert err.where == "MPD/Period[1]/AdaptationSet[1]/Representation[id=v]"
    assert "no BaseURL" in err.detail
    directory = body.replace(
        'bandwidth="1"/>', 'bandwidth="1"><BaseURL>v/</BaseURL></Representation>'
    )
    assert "is a directory" in error_of(mpd(directory)).detail
    missing = '<Period><AdaptationSet><Representation bandwidth="1"/></AdaptationSet></Period>'
    assert error_of(mpd(missing)).where.endswith("Representation[1]@id")
    no_bw = '<Period><AdaptationSet><Representation id="v"/></AdaptationSet></Period>'
    assert error_of(mpd(no_bw)).where.endswith("Representation[id=v]@bandwidth")


def test_object_limit() -> None:
    body = VIDEO.format('<SegmentTemplate media="$Number$" duration="1"/>')
    data = mpd(body, 'mediaPresentationDuration="PT100000000S"')
    assert "more than 1000 segments" in error_of(data, max_objects=1000).detail


@pytest.mark.parametrize("media", ["%2e%2e/%2E%2E/etc/passwd", "a/%2e/b", "a%00b"])
def test_encoded_dot_segments_refused(media: str) -> None:
    body = VIDEO.format(f'<SegmentTemplate media="{media}"/>')
    err = error_of(mpd(body))
    assert err.where == WHERE and "segment" in err.detail


def test_xlink_refused() -> None:
    body = '<Period xmlns:xlink="http://www.w3.org/1999/xlink" xlink:href="http://x/p.xml"/>'
    assert error_of(mpd(body)).where == "MPD/Period[1]@xlink:href"


# --------------------------------------------------------------------------- properties

timelines = st.lists(
    st.tuples(
        st.integers(0, 50),  # gap before this S (0 = contiguous, @t omitted)
        st.integers(1, 1000),  # d
        st.integers(0, 20),  # r
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(timelines, st.integers(0, 5), st.booleans(), st.integers(1, 40_000))
def test_timeline_enumerates_the_right_segments(
    spec: list[tuple[int, int, int]], start_number: int, open_end: bool, tail: int
) -> None:
    # Build the expected segments independently, then the same timeline as XML.
    expected: list[int] = []
    entries: list[str] = []
    time = 0
    for i, (gap, d, r) in enumerate(spec):
        time += gap
        last = i == len(spec) - 1
        if last and open_end:
            end = time + tail  # the Period ends `tail` ticks after this S starts
            count = math.ceil(tail / d)
            entries.append(f'<S t="{time}" d="{d}" r="-1"/>')
        else:
            count = r + 1
            entries.append(f'<S t="{time}" d="{d}" r="{r}"/>' if gap else f'<S d="{d}" r="{r}"/>')
        expected.extend(time + k * d for k in range(count))
        time += count * d
    duration = Fraction(end if open_end else time, 1000)
    body = VIDEO.format(
        f'<SegmentTemplate timescale="1000" startNumber="{start_number}" '
        f'media="$Number$_$Time$.m4s"><SegmentTimeline>{"".join(entries)}'
        "</SegmentTimeline></SegmentTemplate>"
    )
    attrs = f'mediaPresentationDuration="PT{float(duration)!r}S"'
    if open_end and Fraction(repr(float(duration))) != duration:
        return  # not exactly representable as a decimal duration string
    paths = parse_mpd(mpd(body, attrs), MPD_URL).paths
    want = [f"/titles/tos/{start_number + k}_{t}.m4s" for k, t in enumerate(expected)]
    assert list(paths) == want


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 100), st.integers(0, 5)), min_size=1, max_size=8),
    st.integers(1, 1000),
)
def test_expand_timeline_is_contiguous(spec: list[tuple[int, int]], extra: int) -> None:
    entries = [TimelineEntry(t=None, d=d, r=r) for d, r in spec]
    total = sum(r + 1 for _, r in spec)
    out = expand_timeline(entries, start_number=1)
    assert [n for n, _ in out] == list(range(1, total + 1))
    times = [t for _, t in out]
    durations = [d for d, r in spec for _ in range(r + 1)]
    assert times == [sum(durations[:i]) for i in range(total)]
    # r=-1 on the last entry repeats until the end, whatever the remainder
    end = times[-1] + durations[-1] + extra
    last_d = spec[-1][0]
    open_ended = [*entries[:-1], TimelineEntry(t=None, d=last_d, r=-1)]
    grown = expand_timeline(open_ended, end=end)
    start_of_last = times[-1] - spec[-1][1] * last_d
    assert len(grown) == total - spec[-1][1] - 1 + math.ceil((end - start_of_last) / last_d)
    assert grown[-1][1] < end <= grown[-1][1] + last_d


@given(st.integers(0, 10**12), st.integers(1, 12))
def test_number_width_format(number: int, width: int) -> None:
    url = expand_template(f"seg-$Number%0{width}d$.m4s", number=number)
    assert url == f"seg-{number:0{width}d}.m4s"
