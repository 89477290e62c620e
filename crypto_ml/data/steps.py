"""Each series' step in time, read off its times, and its next times: a forecast's ``ds``.

A series' step is the smallest gap between its times when at least half its gaps are that
small (a day missing from daily data is not a two-day step), else its median gap (rows off
the grid and missing rows do not change it; months vary in length). A series of one row
takes the step most series of its chunk have (else a day, or 1 for integer times). A series
a day apart, spanning a week or more, that never falls on a Saturday or a Sunday is in
business days: its next times skip weekends, as pandas' ``freq="B"`` does. Steps of 28-31,
59-62, 89-92, 181-184 and 365-366 days are calendar months (1, 2, 3, 6 and 12 of them),
each counted from the last time, on the day of the month the series keeps (the largest of
its last four rows), so the 30th stays the 30th after February and after April, and month
ends stay month ends. With a time zone, steps of whole days and weekdays are read on its wall
clock (a daily series stays at midnight across a change of daylight saving time), shorter
steps on the UTC clock (an hour the clock repeats or skips is still an hour); the next
times are in UTC (a wall-clock time the clock skips moves forward, one it repeats is read
as its first). Integer times step by 1: ``last + 1 ... last + h``. Not recognised: business
month or year ends, semi-monthly data, 4- or 13-weekly data (read as months and quarters).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

DAY_NS = 86_400 * 10**9
#: Time steps (in days) read as calendar months: monthly, bimonthly, quarterly, half-yearly
#: and yearly data.
CALENDAR_MONTHS = {**dict.fromkeys(range(28, 32), 1), **dict.fromkeys(range(59, 63), 2),
                   **dict.fromkeys(range(89, 93), 3), **dict.fromkeys(range(181, 185), 6),
                   365: 12, 366: 12}
_NONE = np.iinfo(np.int64).max


def series_steps(times: np.ndarray, lengths: np.ndarray, kind: str, zone: str | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(last, step, business, anchor)`` of each series whose rows are ``times`` (int64,
    ``kind`` as the table keeps it), series after series (``lengths`` rows each, none empty).
    With a ``zone``, a step of whole days and the weekdays are read on its wall clock, a
    shorter step on the UTC clock (hours do not repeat or vanish there). ``anchor`` is the
    day of the month a series stepping in months keeps (:func:`month_anchors`)."""
    if not len(lengths):
        return (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool),
                np.zeros(0, np.int64))
    ends = np.cumsum(lengths)
    starts = ends - lengths
    wall = wall_clock(times, zone)
    step = _steps(wall, lengths, starts, ends)
    if zone:
        days = (step > 0) & (step % DAY_NS == 0)
        step = np.where(days, step, _steps(times, lengths, starts, ends))
    business = np.zeros(len(lengths), bool)
    if kind != "int":
        day = DAY_NS if kind == "timestamp" else 1
        weekend = (wall // day + 3) % 7 >= 5  # 1970-01-01, day 0, was a Thursday (3; Monday 0)
        spans_a_week = wall[ends - 1] - wall[starts] >= 7 * day
        business = (step == day) & spans_a_week & ~np.logical_or.reduceat(weekend, starts)
    single = lengths == 1
    if single.any() and not single.all():  # a lone row: as most series of its chunk
        values, counts = np.unique(step[~single], return_counts=True)
        step[single] = values[np.argmax(counts)]
        business[single] = 2 * business[~single].sum() > (~single).sum()
    anchor = (month_anchors(wall, lengths, ends, kind)
              if kind != "int" and _months(step, kind).any() else np.zeros_like(step))
    return times[ends - 1], step, business, anchor


def _months(steps: np.ndarray, kind: str) -> np.ndarray:
    """How many calendar months each step is (:data:`CALENDAR_MONTHS`), 0 for a step that
    is none; ``kind`` a time kind (dates or timestamps)."""
    day = DAY_NS if kind == "timestamp" else 1
    days = np.where(steps % day == 0, steps // day, 0)
    matches = days[:, None] == np.array(list(CALENDAR_MONTHS))  # (series, known steps)
    return (matches * np.array(list(CALENDAR_MONTHS.values()))).sum(axis=1)


def month_anchors(wall: np.ndarray, lengths: np.ndarray, ends: np.ndarray, kind: str
                  ) -> np.ndarray:
    """The day of the month each series keeps when it steps in months: the largest day of
    its last four rows, so a series on the 30th stays on the 30th after February and after
    April (a month's end, but not a month-end series), while a month-end series has a 31st
    among any four (quarterly too); a lone row on a month's end keeps months' ends (31)."""
    day = DAY_NS if kind == "timestamp" else 1
    anchor = np.zeros(len(lengths), np.int64)
    for back in range(4):
        has = lengths > back
        dates = (wall[ends[has] - 1 - back] // day).astype("datetime64[D]")
        days = (dates - dates.astype("datetime64[M]")).astype(np.int64) + 1
        if back == 0:
            month_end = (dates + 1).astype("datetime64[M]") != dates.astype("datetime64[M]")
            days = np.where(month_end & (lengths[has] == 1), 31, days)
        anchor[has] = np.maximum(anchor[has], days)
    return anchor


def _steps(times: np.ndarray, lengths: np.ndarray, starts: np.ndarray, ends: np.ndarray
           ) -> np.ndarray:
    """Each series' smallest gap where at least half its gaps are that small, else its
    median gap (the lower one); 0 for a series of one row."""
    gaps = np.append(np.diff(times), _NONE)
    gaps[gaps <= 0] = _NONE - 1  # rising times: a gap past int64 wrapped round (292 years)
    gaps[ends - 1] = _NONE  # a series' last row: no gap after it within the series
    smallest = np.minimum.reduceat(gaps, starts)
    usual = 2 * np.add.reduceat(gaps == np.repeat(smallest, lengths), starts) >= lengths - 1
    step = np.where(lengths == 1, 0, smallest)
    odd = ~usual & (lengths > 2)
    if odd.any():  # months, or a grid with rows off it: the median gap (a sort of these only)
        series = np.repeat(np.arange(len(lengths)), lengths)
        take = odd[series] & (gaps != _NONE)
        picked, owner = gaps[take], series[take]
        order = np.lexsort((picked, owner))
        counts = np.bincount(owner, minlength=len(lengths))
        firsts = np.cumsum(counts) - counts
        step[odd] = picked[order][firsts[odd] + (counts[odd] - 1) // 2]
    return step


def wall_clock(times: np.ndarray, zone: str | None) -> np.ndarray:
    """UTC nanoseconds as ``zone``'s wall-clock nanoseconds (as they are without a zone)."""
    if not zone:
        return times
    utc = pd.DatetimeIndex(times.view("M8[ns]")).tz_localize("UTC")
    return np.asarray(utc.tz_convert(zone).tz_localize(None).asi8)


def _to_utc(times: np.ndarray, zone: str) -> np.ndarray:
    local = pd.DatetimeIndex(times.reshape(-1).view("M8[ns]"))
    zoned = local.tz_localize(zone, ambiguous=np.ones(len(local), bool),
                              nonexistent="shift_forward")
    return np.asarray(zoned.asi8).reshape(times.shape)


def future_times(kind: str, last: np.ndarray, step: np.ndarray, h: int,
                 business: np.ndarray | None = None, zone: str | None = None,
                 anchor: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The next ``h`` times after each series' ``last`` at its own ``step`` (``business``:
    in business days; ``zone``: steps of whole days taken on its wall clock, ``last`` and the
    times returned in UTC; ``anchor``: the day of the month a step of months keeps, else the
    last time's, a month's end kept), ``(series, h)``, and which series' times would pass the
    largest time their kind holds (their rows are zeros: see the table run's
    ``PAST_THE_LAST_TIME``)."""
    k = np.arange(1, h + 1, dtype=np.int64)
    day = DAY_NS if kind == "timestamp" else 1
    business = np.zeros(len(last), bool) if business is None else business
    steps = (np.ones_like(last) if kind == "int"
             else np.where(business, 3 * day, np.where(step > 0, step, day)))  # 3: h's bound
    on_wall = (steps % day == 0) if zone else np.zeros(len(last), bool)  # days: wall clock
    last = np.where(on_wall, wall_clock(last, zone), last)
    largest = float(np.iinfo(np.int32 if kind == "date" else np.int64).max) - 2048
    beyond = last.astype(np.float64) + steps.astype(np.float64) * h >= largest
    out = np.where(beyond[:, None], 0, last[:, None] + steps[:, None] * k[None, :])
    if kind != "int":
        rows = np.flatnonzero(business & ~beyond)
        days = (last[rows] // day).astype("datetime64[D]")  # a Saturday's next: Monday
        ahead = np.busday_offset(days[:, None], k[None, :], roll="backward").astype(np.int64)
        out[rows] = ahead * day + (last[rows] % day)[:, None]
        _calendar_months(out, kind, last, np.where(business, 0, steps), h, beyond, anchor)
    if zone:
        rows = np.flatnonzero(on_wall & ~beyond)
        out[rows] = _to_utc(out[rows], zone)
    return out, beyond


def _calendar_months(out: np.ndarray, kind: str, last: np.ndarray, steps: np.ndarray, h: int,
                     beyond: np.ndarray, anchor: np.ndarray | None) -> None:
    """Rows of ``out`` whose step is a month, a quarter or a year, as calendar dates on the
    series' ``anchor`` day (the month's last day where it has fewer, at the last time's time
    of day); a start pandas cannot count from is ``beyond``."""
    unit = "ns" if kind == "timestamp" else "D"
    anchor = np.zeros(len(last), np.int64) if anchor is None else anchor
    each = _months(steps, kind)
    for months in set(np.unique(each).tolist()) - {0}:
        rows = np.flatnonzero((each == months) & ~beyond)
        for t, keep in {(int(last[r]), int(anchor[r])) for r in rows}:
            same = rows[(last[rows] == t) & (anchor[rows] == keep)]
            try:
                dates = _months_on(pd.Timestamp(t, unit=unit), months, keep, h)
            except (OverflowError, ValueError, pd.errors.OutOfBoundsDatetime):
                beyond[same], out[same] = True, 0
                continue
            out[same] = dates.values.astype(f"datetime64[{unit}]").astype(np.int64)


def _months_on(start: pd.Timestamp, months: int, anchor: int, h: int) -> pd.DatetimeIndex:
    """``h`` dates ``months`` apart after ``start``, each on day ``anchor`` of its month (its
    last day where it has fewer; 0: ``start``'s day, or each month's end from one), counted
    from ``start`` (no drift), at ``start``'s time of day."""
    anchor = anchor or (31 if start.is_month_end else start.day)
    first, time_of_day = start.to_period("M"), start - start.normalize()
    periods = [first + months * j for j in range(1, h + 1)]
    return pd.DatetimeIndex([p.to_timestamp() + pd.Timedelta(days=min(anchor, p.days_in_month) - 1)
                             + time_of_day for p in periods])
