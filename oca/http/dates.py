"""HTTP-date formatting and parsing (RFC 9110 §5.6.7), by pure calendar arithmetic.

Theory of operation
-------------------
An HTTP-date names one second in UTC. RFC 9110 §5.6.7 defines three forms:

- ``IMF-fixdate``, the only one a sender generates: ``Sun, 06 Nov 1994 08:49:37 GMT``;
- ``rfc850-date`` (obsolete): ``Sunday, 06-Nov-94 08:49:37 GMT``;
- ``asctime-date`` (obsolete): ``Sun Nov  6 08:49:37 1994``.

A recipient that parses a timestamp MUST accept all three, so :func:`parse_http_date`
does, and :func:`format_http_date` always produces ``IMF-fixdate``.

The conversion between a date and seconds since the epoch uses the proleptic Gregorian
day-count formulas (days from/to civil date, counted in 400-year eras of 146097 days)
rather than ``time.gmtime``/``time.strftime``: the result is then independent of the
platform's ``time_t``, of the locale (``strftime`` would translate day and month names)
and of the process's time zone, and the module stays free of I/O and clocks.

Parsing rules, all from the §5.6.7 grammar:

- day and month names, the ``GMT`` suffix and the separators are case-sensitive and
  must be exactly as in the grammar; digits are ASCII digits only;
- the field value may carry leading or trailing optional whitespace (SP / HTAB),
  which is removed first (RFC 9110 §5.5);
- hour 00-23, minute 00-59, second 00-60 (a leap second is read as the first second of
  the next minute); the day must exist in its month;
- the day name is checked against the grammar but not against the date: it is
  redundant, and a mismatch is a sender bug that does not change which second is meant;
- a two-digit ``rfc850-date`` year is placed in a century as §5.6.7 asks ("a timestamp
  that appears to be more than 50 years in the future" is the most recent past year
  with those digits) when the caller passes ``now``; without ``now`` the POSIX
  ``strptime`` pivot is used (00-68 → 2000-2068, 69-99 → 1969-1999).

Anything else yields ``None``; the caller decides what an invalid date means (for
conditional requests, RFC 9110 §13.1.3 and §13.1.4 say to ignore the header field).
"""

from __future__ import annotations

import re

__all__ = ["MAX_HTTP_DATE", "MIN_HTTP_DATE", "format_http_date", "parse_http_date"]

_SHORT_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_LONG_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH_NUMBER = {name: number for number, name in enumerate(_MONTHS, start=1)}

_SECONDS_PER_DAY = 86_400
_EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday; Monday is 0 as in _SHORT_DAYS


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (any year, negative allowed)."""
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146_097 + day_of_era - 719_468


def _civil_from_days(days: int) -> tuple[int, int, int]:
    """The (year, month, day) that is ``days`` days after 1970-01-01."""
    days += 719_468
    era = days // 146_097
    day_of_era = days - era * 146_097
    year_of_era = (
        day_of_era - day_of_era // 1460 + day_of_era // 36_524 - day_of_era // 146_096
    ) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    shifted_month = (5 * day_of_year + 2) // 153
    day = day_of_year - (153 * shifted_month + 2) // 5 + 1
    month = shifted_month + (3 if shifted_month < 10 else -9)
    year = year_of_era + era * 400 + (month <= 2)
    return year, month, day


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def _days_in_month(year: int, month: int) -> int:
    if month == 2:
        return 29 if _is_leap(year) else 28
    return 30 if month in (4, 6, 9, 11) else 31


MIN_HTTP_DATE = _days_from_civil(0, 1, 1) * _SECONDS_PER_DAY
"""The first second an IMF-fixdate can name: ``Sat, 01 Jan 0000 00:00:00 GMT``."""

MAX_HTTP_DATE = _days_from_civil(10_000, 1, 1) * _SECONDS_PER_DAY - 1
"""The last second an IMF-fixdate can name: ``Fri, 31 Dec 9999 23:59:59 GMT``."""


def format_http_date(ts: int) -> str:
    """Format seconds since the epoch as an IMF-fixdate, e.g. ``Sun, 06 Nov 1994 08:49:37 GMT``.

    Raises ``ValueError`` when the year would not fit the grammar's four digits.
    """
    if not MIN_HTTP_DATE <= ts <= MAX_HTTP_DATE:
        raise ValueError(f"timestamp {ts} is outside the range of an HTTP-date")
    days, second_of_day = divmod(ts, _SECONDS_PER_DAY)
    year, month, day = _civil_from_days(days)
    hour, rest = divmod(second_of_day, 3600)
    minute, second = divmod(rest, 60)
    weekday = _SHORT_DAYS[(days + _EPOCH_WEEKDAY) % 7]
    return (
        f"{weekday}, {day:02d} {_MONTHS[month - 1]} {year:04d} "
        f"{hour:02d}:{minute:02d}:{second:02d} GMT"
    )


_SHORT_DAY_RE = "|".join(_SHORT_DAYS)
_LONG_DAY_RE = "|".join(_LONG_DAYS)
_MONTH_RE = "|".join(_MONTHS)
_TIME_RE = "([0-9]{2}):([0-9]{2}):([0-9]{2})"

_IMF_FIXDATE = re.compile(
    rf"(?:{_SHORT_DAY_RE}), ([0-9]{{2}}) ({_MONTH_RE}) ([0-9]{{4}}) {_TIME_RE} GMT"
)
_RFC850_DATE = re.compile(
    rf"(?:{_LONG_DAY_RE}), ([0-9]{{2}})-({_MONTH_RE})-([0-9]{{2}}) {_TIME_RE} GMT"
)
_ASCTIME_DATE = re.compile(
    rf"(?:{_SHORT_DAY_RE}) ({_MONTH_RE}) ([0-9]{{2}}| [0-9]) {_TIME_RE} ([0-9]{{4}})"
)

# The longest valid form is an rfc850-date with "Wednesday" (33 characters); anything
# much longer is rejected before any pattern runs.
_MAX_LENGTH = 64


def _century_for(two_digit_year: int, now: int | None) -> int:
    if now is None:
        return 2000 + two_digit_year if two_digit_year < 69 else 1900 + two_digit_year
    current_year = _civil_from_days(now // _SECONDS_PER_DAY)[0]
    year = current_year - current_year % 100 + two_digit_year
    if year > current_year + 50:
        year -= 100
    return year


def _to_timestamp(year: int, month: int, day: int, hour: int, minute: int, second: int) -> int:
    return (
        _days_from_civil(year, month, day) * _SECONDS_PER_DAY + hour * 3600 + minute * 60 + second
    )


def parse_http_date(value: str, *, now: int | None = None) -> int | None:
    """Parse an HTTP-date in any of the three RFC 9110 §5.6.7 forms; ``None`` if invalid.

    ``now`` (seconds since the epoch) only matters for the two-digit year of an
    obsolete ``rfc850-date``; see the module docstring.
    """
    if len(value) > _MAX_LENGTH:
        return None
    text = value.strip(" \t")
    if match := _IMF_FIXDATE.fullmatch(text):
        day_s, month_s, year_s, hour_s, minute_s, second_s = match.groups()
        year = int(year_s)
    elif match := _RFC850_DATE.fullmatch(text):
        day_s, month_s, year_s, hour_s, minute_s, second_s = match.groups()
        year = _century_for(int(year_s), now)
    elif match := _ASCTIME_DATE.fullmatch(text):
        month_s, day_s, hour_s, minute_s, second_s, year_s = match.groups()
        year = int(year_s)
    else:
        return None
    month = _MONTH_NUMBER[month_s]
    day, hour, minute, second = int(day_s), int(hour_s), int(minute_s), int(second_s)
    if not 1 <= day <= _days_in_month(year, month):
        return None
    if hour > 23 or minute > 59 or second > 60:
        return None
    return _to_timestamp(year, month, day, hour, minute, second)
