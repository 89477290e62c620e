"""Each series' step in time, read off its times, and its next times: a forecast's ``ds``.

A series' step is the smallest gap between its times, so a day missing from daily data is
not a two-day step; a series of one row takes the step most series of its chunk have (else a
day, or 1 for integer times). A series a day apart at the least, spanning a week or more, that
never falls on a Saturday or a Sunday is in business days: its next times skip weekends, as
pandas' ``freq="B"`` does. Steps of 28-31, 89-92 and 365-366 days are calendar months,
quarters and years (from a month's end: each month's end). Integer times step by 1:
``last + 1 ... last + h``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

DAY_NS = 86_400 * 10**9
#: Time steps (in days) read as calendar months: monthly, quarterly, yearly data.
CALENDAR_MONTHS = {**dict.fromkeys(range(28, 32), 1), **dict.fromkeys(range(89, 93), 3),
                   365: 12, 366: 12}
_NONE = np.iinfo(np.int64).max


def series_steps(times: np.ndarray, lengths: np.ndarray, kind: str
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``(step, business)`` of each series whose rows are ``times`` (int64, ``kind`` as the
    table keeps it), series after series (``lengths`` rows each, none empty)."""
    if not len(lengths):
        return np.zeros(0, np.int64), np.zeros(0, bool)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    gaps = np.append(np.diff(times), _NONE)
    gaps[ends - 1] = _NONE  # a series' last row: no gap after it within the series
    step = np.minimum.reduceat(gaps, starts)
    single = step == _NONE
    step[single] = 0
    if single.any() and not single.all():
        values, counts = np.unique(step[~single], return_counts=True)
        step[single] = values[np.argmax(counts)]
    if kind == "int":
        return step, np.zeros(len(lengths), bool)
    day = DAY_NS if kind == "timestamp" else 1
    weekend = (times // day + 3) % 7 >= 5  # 1970-01-01, day 0, was a Thursday (3; Monday 0)
    spans_a_week = times[ends - 1] - times[starts] >= 7 * day
    return step, (step == day) & spans_a_week & ~np.logical_or.reduceat(weekend, starts)


def future_times(kind: str, last: np.ndarray, step: np.ndarray, h: int,
                 business: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The next ``h`` times after each series' ``last`` at its own ``step`` (``business``:
    in business days), ``(series, h)``, and which series' times would pass the largest time
    their kind holds (their rows are zeros: see the table run's ``PAST_THE_LAST_TIME``)."""
    k = np.arange(1, h + 1, dtype=np.int64)
    day = DAY_NS if kind == "timestamp" else 1
    business = np.zeros(len(last), bool) if business is None else business
    steps = (np.ones_like(last) if kind == "int"
             else np.where(business, 3 * day, np.where(step > 0, step, day)))  # 3: h's bound
    largest = float(np.iinfo(np.int32 if kind == "date" else np.int64).max) - 2048
    beyond = last.astype(np.float64) + steps.astype(np.float64) * h >= largest
    out = np.where(beyond[:, None], 0, last[:, None] + steps[:, None] * k[None, :])
    if kind != "int":
        rows = np.flatnonzero(business & ~beyond)
        days = (last[rows] // day).astype("datetime64[D]")
        ahead = np.busday_offset(days[:, None], k[None, :], roll="forward").astype(np.int64)
        out[rows] = ahead * day + (last[rows] % day)[:, None]
        _calendar_months(out, kind, last, np.where(business, 0, steps), h, beyond)
    return out, beyond


def _calendar_months(out: np.ndarray, kind: str, last: np.ndarray, steps: np.ndarray, h: int,
                     beyond: np.ndarray) -> None:
    """Rows of ``out`` whose step is a month, a quarter or a year, as calendar dates (from
    a month's end: each month's end); a start pandas cannot count from is ``beyond``."""
    day = DAY_NS if kind == "timestamp" else 1
    unit = "ns" if kind == "timestamp" else "D"
    days = np.where(steps % day == 0, steps // day, 0)
    for months in {CALENDAR_MONTHS.get(int(d), 0) for d in np.unique(days)} - {0}:
        picked = np.array([CALENDAR_MONTHS.get(int(d), 0) == months for d in days])
        rows = np.flatnonzero(picked & ~beyond)
        for t in np.unique(last[rows]):
            same = rows[last[rows] == t]
            try:
                start = pd.Timestamp(int(t), unit=unit)
                offset = (pd.offsets.MonthEnd(months) if start.is_month_end
                          else pd.DateOffset(months=months))
                dates = pd.date_range(start, periods=h + 1, freq=offset)[1:]
            except (OverflowError, pd.errors.OutOfBoundsDatetime):
                beyond[same], out[same] = True, 0
                continue
            out[same] = dates.values.astype(f"datetime64[{unit}]").astype(np.int64)
