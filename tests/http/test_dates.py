"""HTTP-date formatting and parsing (RFC 9110 §5.6.7)."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import formatdate

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oca.http.dates import MAX_HTTP_DATE, MIN_HTTP_DATE, format_http_date, parse_http_date

RFC_EXAMPLE = 784_111_777  # Sun, 06 Nov 1994 08:49:37 GMT, the example of §5.6.7

timestamps = st.integers(min_value=0, max_value=253_402_300_799)


def test_format_rfc_example() -> None:
    assert format_http_date(RFC_EXAMPLE) == "Sun, 06 Nov 1994 08:49:37 GMT"


@pytest.mark.parametrize(
    ("ts", "text"),
    [
        (0, "Thu, 01 Jan 1970 00:00:00 GMT"),
        (951_782_400, "Tue, 29 Feb 2000 00:00:00 GMT"),
        (253_402_300_799, "Fri, 31 Dec 9999 23:59:59 GMT"),
        (-1, "Wed, 31 Dec 1969 23:59:59 GMT"),
        (MIN_HTTP_DATE, "Sat, 01 Jan 0000 00:00:00 GMT"),
    ],
)
def test_format_known_values(ts: int, text: str) -> None:
    assert format_http_date(ts) == text
    assert parse_http_date(text) == ts


def test_max_http_date_is_end_of_9999() -> None:
    assert MAX_HTTP_DATE == 253_402_300_799


@pytest.mark.parametrize("ts", [MIN_HTTP_DATE - 1, MAX_HTTP_DATE + 1, 10**20, -(10**20)])
def test_format_rejects_out_of_range(ts: int) -> None:
    with pytest.raises(ValueError):
        format_http_date(ts)


@pytest.mark.parametrize(
    "text",
    [
        "Sun, 06 Nov 1994 08:49:37 GMT",  # IMF-fixdate
        "Sunday, 06-Nov-94 08:49:37 GMT",  # obsolete RFC 850
        "Sun Nov  6 08:49:37 1994",  # obsolete asctime
        "Sun Nov 06 08:49:37 1994",  # asctime with a two-digit day
        "  Sun, 06 Nov 1994 08:49:37 GMT\t",  # surrounding OWS
    ],
)
def test_parse_all_three_forms(text: str) -> None:
    assert parse_http_date(text) == RFC_EXAMPLE


def test_parse_ignores_day_name_mismatch() -> None:
    assert parse_http_date("Mon, 06 Nov 1994 08:49:37 GMT") == RFC_EXAMPLE


def test_parse_leap_second_is_next_minute() -> None:
    assert parse_http_date("Sat, 31 Dec 2016 23:59:60 GMT") == parse_http_date(
        "Sun, 01 Jan 2017 00:00:00 GMT"
    )


def test_parse_leap_day() -> None:
    assert parse_http_date("Thu, 29 Feb 2024 12:00:00 GMT") == 1_709_208_000
    assert parse_http_date("Tue, 29 Feb 2000 00:00:00 GMT") == 951_782_400
    assert parse_http_date("Thu, 29 Feb 1900 00:00:00 GMT") is None
    assert parse_http_date("Wed, 29 Feb 2023 00:00:00 GMT") is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "garbage",
        "784111777",
        "sun, 06 Nov 1994 08:49:37 GMT",  # day names are case-sensitive
        "Sun, 06 nov 1994 08:49:37 GMT",  # month names too
        "Sun, 06 Nov 1994 08:49:37 gmt",
        "Sun, 06 Nov 1994 08:49:37 UTC",
        "Sun, 06 Nov 1994 08:49:37",
        "Sun, 06 Nov 1994 08:49:37 +0000",
        "Sun, 6 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 94 08:49:37 GMT",
        "Sun,  06 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 8:49:37 GMT",
        "Sun, 00 Nov 1994 08:49:37 GMT",
        "Sun, 31 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 24:00:00 GMT",
        "Sun, 06 Nov 1994 08:60:00 GMT",
        "Sun, 06 Nov 1994 08:49:61 GMT",
        "Sun, 06 Foo 1994 08:49:37 GMT",
        "Sun, \u0660\u0666 Nov 1994 08:49:37 GMT",  # Arabic-Indic digits
        "Sun, 06 Nov 1994 08:49:37 GMT, Sun, 06 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 08:49:37 GMT" + " " * 100,
        "Sun, 06-Nov-94 08:49:37 GMT",  # RFC 850 needs the long day name
        "Sunday, 06 Nov 1994 08:49:37 GMT",
        "Sunday, 06-Nov-1994 08:49:37 GMT",
        "Sun Nov 6 08:49:37 1994",  # asctime pads a one-digit day with a space
        "Sun Nov  6 08:49:37 1994 GMT",
        "Sun Nov  6 08:49:37 94",
        "Sun, 06 Nov 1994 08:49:37 GMT\r\n",
    ],
)
def test_parse_rejects(text: str) -> None:
    assert parse_http_date(text) is None


def test_rfc850_two_digit_year_without_now_uses_posix_pivot() -> None:
    assert parse_http_date("Monday, 01-Jan-68 00:00:00 GMT") == parse_http_date(
        "Sun, 01 Jan 2068 00:00:00 GMT"
    )
    assert parse_http_date("Tuesday, 01-Jan-69 00:00:00 GMT") == parse_http_date(
        "Wed, 01 Jan 1969 00:00:00 GMT"
    )


def test_rfc850_two_digit_year_with_now_follows_the_fifty_year_rule() -> None:
    now = parse_http_date("Mon, 01 Jul 2024 00:00:00 GMT")
    assert now is not None
    # 2074 is exactly 50 years ahead: kept; 2075 would be more: the past year is meant.
    assert parse_http_date("Thursday, 01-Jan-74 00:00:00 GMT", now=now) == parse_http_date(
        "Tue, 01 Jan 2074 00:00:00 GMT"
    )
    assert parse_http_date("Friday, 01-Jan-75 00:00:00 GMT", now=now) == parse_http_date(
        "Wed, 01 Jan 1975 00:00:00 GMT"
    )
    assert parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT", now=now) == RFC_EXAMPLE
    assert parse_http_date("Wednesday, 01-Jan-25 00:00:00 GMT", now=now) == parse_http_date(
        "Wed, 01 Jan 2025 00:00:00 GMT"
    )


@given(timestamps)
def test_roundtrip(ts: int) -> None:
    text = format_http_date(ts)
    assert parse_http_date(text) == ts


@given(timestamps)
def test_format_matches_email_utils(ts: int) -> None:
    assert format_http_date(ts) == formatdate(ts, usegmt=True)


@given(timestamps)
def test_obsolete_forms_parse_to_the_same_second(ts: int) -> None:
    moment = datetime.fromtimestamp(ts, UTC)
    asctime = moment.strftime("%a %b ") + f"{moment.day:2d}" + moment.strftime(" %H:%M:%S %Y")
    assert parse_http_date(asctime) == ts
    if 1969 <= moment.year <= 2068:
        rfc850 = moment.strftime("%A, %d-%b-%y %H:%M:%S GMT")
        assert parse_http_date(rfc850) == ts


@given(st.one_of(st.text(), st.binary().map(lambda raw: raw.decode("latin-1"))))
def test_parse_never_raises(text: str) -> None:
    result = parse_http_date(text)
    assert result is None or MIN_HTTP_DATE <= result <= MAX_HTTP_DATE + 1


@given(
    timestamps,
    st.integers(min_value=0, max_value=29),
    st.characters(exclude_characters=" \t"),
)
def test_parse_rejects_an_inserted_character(ts: int, position: int, char: str) -> None:
    text = format_http_date(ts)
    assert parse_http_date(text[:position] + char + text[position:]) is None


@given(timestamps, st.integers(min_value=0, max_value=28))
def test_parse_rejects_a_deleted_character(ts: int, position: int) -> None:
    text = format_http_date(ts)
    assert parse_http_date(text[:position] + text[position + 1 :]) is None
