"""steering.rewrite: signed appliance BaseURLs, content steering, namespaces kept, and every
object still reachable under a token that the appliance's verifier accepts."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from urllib.parse import urljoin, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oca.auth.tokens import TokenVerifier, split_token_path
from oca.errors import TokenError
from steering.mpd import MPD_NAMESPACE, MpdError, parse_mpd
from steering.rewrite import relative_reference, rewrite_mpd
from steering.signing import Signer

SECRET = bytes(range(32))
KEYS = {"k1": SECRET}
EXPIRES = 1_800_000_000
NOW = EXPIRES - 100
MPD_URL = "/titles/tos/manifest.mpd"
STEERING_MPD_URL = "http://steering.example:9000/v1/titles/tos/manifest.mpd"
STEERING_URL = "http://steering.example:9000/v1/steering/tos"
APPLIANCES = ["http://10.1.0.1:8080", "http://10.1.0.2:8080", "https://[2001:db8::3]:8443"]
Q = f"{{{MPD_NAMESPACE}}}"

SAMPLE = b"""<?xml version="1.0" encoding="UTF-8"?>
<!-- packaged by a packager -->
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" xmlns:cenc="urn:mpeg:cenc:2013"
     xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
     xsi:schemaLocation="urn:mpeg:dash:schema:mpd:2011 DASH-MPD.xsd"
     type="static" mediaPresentationDuration="PT8S" minBufferTime="PT2S"
     profiles="urn:mpeg:dash:profile:isoff-live:2011">
  <ProgramInformation><Title>Tears &amp; Steel</Title></ProgramInformation>
  <BaseURL>http://origin.example:8000/titles/tos/</BaseURL>
  <BaseURL>http://backup.example/titles/tos/</BaseURL>
  <ContentSteering defaultServiceLocation="old">http://old/steer</ContentSteering>
  <Period id="p0">
    <!-- video -->
    <AdaptationSet contentType="video" mimeType="video/mp4">
      <ContentProtection schemeIdUri="urn:mpeg:dash:mp4protection:2011" cenc:default_KID="0123"/>
      <SegmentTemplate timescale="1000" duration="4000" initialization="$RepresentationID$/init.mp4"
                       media="/titles/tos/$RepresentationID$/$Number%03d$.m4s"/>
      <Representation id="v720" bandwidth="3000000" codecs="avc1.64001f"/>
      <Representation id="v480" bandwidth="1000000" codecs="avc1.64001e"/>
    </AdaptationSet>
    <AdaptationSet contentType="text" mimeType="text/vtt" lang="en">
      <Representation id="en" bandwidth="256">
        <BaseURL>/titles/tos/subs/en.vtt</BaseURL>
      </Representation>
    </AdaptationSet>
  </Period>
</MPD>
"""


def signed_bases(count: int, prefix: str = "/titles/tos/") -> list[tuple[str, str]]:
    signer = Signer(KEYS, "k1")
    return [(f"oca-{i}", signer.signed_base(APPLIANCES[i], prefix, EXPIRES)) for i in range(count)]


def reachable(rewritten: bytes, location: str, appliance: str) -> list[str]:
    """The URL paths a player following ``location`` would request."""
    info = parse_mpd(
        rewritten, STEERING_MPD_URL, same_origins=[appliance], service_location=location
    )
    return list(info.paths)


def test_rewrite_sample() -> None:
    bases = signed_bases(3)
    out = rewrite_mpd(SAMPLE, bases, STEERING_URL)
    text = out.decode()
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<MPD ')
    assert 'xmlns="urn:mpeg:dash:schema:mpd:2011"' in text and "ns0" not in text
    assert 'cenc:default_KID="0123"' in text and 'xmlns:cenc="urn:mpeg:cenc:2013"' in text
    assert 'xsi:schemaLocation="urn:mpeg:dash:schema:mpd:2011 DASH-MPD.xsd"' in text
    assert "<!-- video -->" in text and "Tears &amp; Steel" in text
    root = ET.fromstring(out)
    names = [child.tag.replace(Q, "") for child in root if isinstance(child.tag, str)]
    assert names == ["ProgramInformation", "BaseURL", "BaseURL", "BaseURL", "ContentSteering",
                     "Period"]  # fmt: skip
    base_urls = root.findall(f"{Q}BaseURL")
    assert [(b.get("serviceLocation"), b.text) for b in base_urls] == bases
    (steering,) = root.findall(f"{Q}ContentSteering")
    assert steering.attrib == {"defaultServiceLocation": "oca-0", "queryBeforeStart": "false"}
    assert steering.text == STEERING_URL
    # Absolute paths below the MPD level became relative, so they keep the token.
    template = root.find(f"{Q}Period/{Q}AdaptationSet/{Q}SegmentTemplate")
    assert template is not None and template.get("media") == "$RepresentationID$/$Number%03d$.m4s"
    subs = root.find(f"{Q}Period/{Q}AdaptationSet[2]/{Q}Representation/{Q}BaseURL")
    assert subs is not None and subs.text == "subs/en.vtt"
    original = parse_mpd(SAMPLE, "http://origin.example:8000/titles/tos/manifest.mpd").paths
    assert len(original) == 2 * 3 + 1
    verifier = TokenVerifier(KEYS)
    for i, (location, _) in enumerate(bases):
        paths = reachable(out, location, APPLIANCES[i])
        objects = []
        for path in paths:
            token, object_path = split_token_path(path)
            assert token is not None
            verifier.verify(token, object_path, NOW, "192.0.2.1")
            objects.append(object_path)
        assert tuple(objects) == original


def test_options_and_no_steering() -> None:
    bases = signed_bases(2)
    out = rewrite_mpd(
        SAMPLE,
        bases,
        STEERING_URL,
        default_service_location="oca-1",
        query_before_start=True,
        proxy_server_url="http://proxy/steer",
    )
    (steering,) = ET.fromstring(out).findall(f"{Q}ContentSteering")
    assert steering.attrib == {
        "defaultServiceLocation": "oca-1",
        "queryBeforeStart": "true",
        "proxyServerURL": "http://proxy/steer",
    }
    plain = rewrite_mpd(SAMPLE, bases, None)
    assert ET.fromstring(plain).findall(f"{Q}ContentSteering") == []


def test_relative_mpd_base_url_is_folded_under_the_token() -> None:
    data = b"""<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static"
      mediaPresentationDuration="PT2S"><BaseURL>content/</BaseURL>
      <Period><AdaptationSet mimeType="video/mp4"><Representation id="v" bandwidth="1">
      <BaseURL>v.mp4</BaseURL></Representation></AdaptationSet></Period></MPD>"""
    bases = signed_bases(1)
    out = rewrite_mpd(data, bases, STEERING_URL)
    (base,) = ET.fromstring(out).findall(f"{Q}BaseURL")
    assert base.text == bases[0][1] + "content/"
    (path,) = reachable(out, "oca-0", APPLIANCES[0])
    assert split_token_path(path)[1] == "/titles/tos/content/v.mp4"


def test_no_namespace_mpd_and_unsigned_bases() -> None:
    data = b"""<MPD type="static"><Period><AdaptationSet mimeType="video/mp4">
      <Representation id="v" bandwidth="1"><BaseURL>v.mp4</BaseURL></Representation>
      </AdaptationSet></Period></MPD>"""
    out = rewrite_mpd(data, [("a", "http://10.1.0.1:8080/titles/tos/")], STEERING_URL)
    assert b"xmlns" not in out
    root = ET.fromstring(out)
    assert [c.tag for c in root] == ["BaseURL", "ContentSteering", "Period"]
    assert reachable(out, "a", "http://10.1.0.1:8080") == ["/titles/tos/v.mp4"]


def test_shared_absolute_template_with_different_bases_is_refused() -> None:
    data = b"""<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static"
      mediaPresentationDuration="PT2S"><Period><AdaptationSet mimeType="video/mp4">
      <SegmentTemplate duration="1" media="/titles/tos/$Number$.m4s"/>
      <Representation id="a" bandwidth="1"><BaseURL>a/</BaseURL></Representation>
      <Representation id="b" bandwidth="1"><BaseURL>b/</BaseURL></Representation>
      </AdaptationSet></Period></MPD>"""
    with pytest.raises(MpdError) as info:
        rewrite_mpd(data, signed_bases(1), None)
    assert info.value.where == "MPD/Period[1]/AdaptationSet[1]/SegmentTemplate@media"


@pytest.mark.parametrize(
    ("bases", "kwargs", "words"),
    [
        ([], {}, "at least one"),
        ([("a", APPLIANCES[0] + "/titles/tos/")] * 2, {}, "repeat"),
        ([("a b", APPLIANCES[0] + "/titles/tos/")], {}, "one word"),
        ([("a", APPLIANCES[0] + "/titles/tos/")], {"default_service_location": "z"}, "among"),
        ([("a", "/titles/tos/")], {}, "http(s)"),
        ([("a", APPLIANCES[0] + "/titles/tos")], {}, "directory"),
        ([("a", APPLIANCES[0] + "/titles/tos/?x=1")], {}, "query"),
        (
            [("a", APPLIANCES[0] + "/titles/tos/"), ("b", APPLIANCES[1] + "/titles/x/")],
            {},
            "same title directory",
        ),
    ],
)
def test_bad_arguments(bases: list[tuple[str, str]], kwargs: dict[str, str], words: str) -> None:
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        rewrite_mpd(SAMPLE, bases, STEERING_URL, **kwargs)  # type: ignore[arg-type]


def test_refuses_bad_xml() -> None:
    with pytest.raises(MpdError):
        rewrite_mpd(b'<!DOCTYPE x [<!ENTITY a "b">]><MPD/>', signed_bases(1), None)


# --------------------------------------------------------------------------- properties

segment = st.text(alphabet="abcdefgh-_", min_size=1, max_size=4)
url_paths = st.lists(segment, min_size=0, max_size=4).map(lambda parts: "/" + "/".join(parts))


@given(url_paths, url_paths, st.booleans())
def test_relative_reference_resolves_back(base: str, target: str, target_dir: bool) -> None:
    target = target.rstrip("/") + "/" if target_dir else target
    reference = relative_reference(base, target)
    assert not reference.startswith("/")
    assert urljoin("http://h" + base, reference) == "http://h" + target


REP = """<Representation id="{rid}" bandwidth="{bw}">{inner}</Representation>"""


def _representation(mode: str, rid: str, n: int, absolute: bool) -> str:
    root = "/titles/tos/" if absolute else ""
    if mode == "template":
        media = f"{root}{rid}/$Number%04d$.m4s"
        inner = (
            f'<SegmentTemplate timescale="10" duration="10" media="{media}" '
            f'initialization="{root}{rid}/init.mp4"/>'
        )
    elif mode == "timeline":
        inner = (
            f'<SegmentTemplate timescale="10" media="{rid}/$Time$.m4s" '
            f'initialization="{rid}/i.mp4"><SegmentTimeline><S d="7" r="{n - 1}"/>'
            "</SegmentTimeline></SegmentTemplate>"
        )
    elif mode == "list":
        urls = "".join(f'<SegmentURL media="{root}{rid}/s{k}.m4s"/>' for k in range(n))
        inner = (
            f'<BaseURL>{rid}/</BaseURL><SegmentList><Initialization sourceURL="init.mp4"/>'
            f"{urls}</SegmentList>"
        )
    else:  # single file, SegmentBase or none
        inner = f'<BaseURL>{root}{rid}.mp4</BaseURL><SegmentBase indexRange="0-9"/>'
    return REP.format(rid=rid, bw=1000 * (n + 1), inner=inner)


titles = st.fixed_dictionaries(
    {
        "reps": st.lists(
            st.tuples(
                st.sampled_from(["template", "timeline", "list", "file"]),
                st.integers(1, 6),
                st.booleans(),
            ),
            min_size=1,
            max_size=4,
        ),
        "mpd_base": st.sampled_from(["", "/titles/tos/", "http://origin:8000/titles/tos/"]),
        "subtitle": st.booleans(),
        "appliances": st.integers(1, 3),
        "client": st.sampled_from([None, "192.0.2.0/24"]),
    }
)


@settings(max_examples=40, deadline=None)
@given(titles)
def test_every_rewritten_object_verifies(title: dict[str, object]) -> None:
    reps = title["reps"]
    assert isinstance(reps, list)
    sets = "".join(
        f'<AdaptationSet mimeType="video/mp4">{_representation(m, f"r{i}", n, a)}</AdaptationSet>'
        for i, (m, n, a) in enumerate(reps)
    )
    if title["subtitle"]:
        sets += (
            '<AdaptationSet contentType="text" mimeType="text/vtt"><Representation id="en" '
            'bandwidth="1"><BaseURL>subs/en.vtt</BaseURL></Representation></AdaptationSet>'
        )
    mpd_base = f"<BaseURL>{title['mpd_base']}</BaseURL>" if title["mpd_base"] else ""
    data = (
        '<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" '
        f'mediaPresentationDuration="PT3S">{mpd_base}<Period>{sets}</Period></MPD>'
    ).encode()
    original = parse_mpd(data, MPD_URL, same_origins=["http://origin:8000"]).paths
    client = title["client"]
    assert client is None or isinstance(client, str)
    signer = Signer(KEYS, "k1")
    count = title["appliances"]
    assert isinstance(count, int)
    bases = [
        (f"oca-{i}", signer.signed_base(APPLIANCES[i], "/titles/tos/", EXPIRES, client))
        for i in range(count)
    ]
    out = rewrite_mpd(data, bases, STEERING_URL)
    verifier = TokenVerifier(KEYS)
    for i, (location, base_url) in enumerate(bases):
        paths = reachable(out, location, APPLIANCES[i])
        objects = []
        for path in paths:
            token, object_path = split_token_path(path)
            assert token is not None
            assert verifier.verify(token, object_path, NOW, "192.0.2.9").prefix == "/titles/tos/"
            objects.append(object_path)
        assert tuple(objects) == original
        # The same token does not open another title, a sibling prefix or a forgery.
        token = split_token_path(urlsplit(base_url).path)[0]
        assert token is not None
        for other in ("/titles/other/v/1.m4s", "/titles/tos2/v/1.m4s", "/titles/tos"):
            with pytest.raises(TokenError) as info:
                verifier.verify(token, other, NOW, "192.0.2.9")
            assert info.value.reason == "path-not-covered"
        forged = token[:-1] + ("A" if token[-1] != "A" else "B")
        with pytest.raises(TokenError) as info:
            verifier.verify(forged, original[0], NOW, "192.0.2.9")
        assert info.value.reason in ("bad-signature", "malformed")
        other_title = signer.token("/titles/other/", EXPIRES)
        with pytest.raises(TokenError) as info:
            verifier.verify(other_title, original[0], NOW, "192.0.2.9")
        assert info.value.reason == "path-not-covered"
