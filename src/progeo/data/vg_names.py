"""The visual geo-localization file-name format, parsed for millions of names at once.

An image's labels are in its file *name* (never its parent folders), fields between ``@``::

    @UTM_east@UTM_north@UTM_zone_number@UTM_zone_letter@lat@lon@pano_id@tile_num@heading@pitch@roll@height@timestamp@note@.jpg

:func:`parse_vg_names` works on an :class:`~progeo.data.image_lists.ImageList` (one bytes
buffer) or a list of strings: it finds the ``@`` separators with numpy, chunk by chunk, and
parses the numeric fields with a vectorized decimal reader (exact: the same float as
``float(text)``); text numpy cannot read (``1e3``, ``nan``) falls back to ``float`` for those
entries only. Empty fields are NaN (numbers) or ``b""`` (text) unless the field is
``required``, in which case, like any malformed name, it is an error that names the file, the
field and the expected form. Text fields come back as numpy bytes arrays (``dtype='S'``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field as dc_field
from typing import Any

import numpy as np

from progeo.errors import DatasetError

NAME_TEMPLATE = ("@UTM_east@UTM_north@UTM_zone_number@UTM_zone_letter@lat@lon@pano_id@tile_num"
                 "@heading@pitch@roll@height@timestamp@note@.jpg")
FIELDS = ("utm_east", "utm_north", "utm_zone_number", "utm_zone_letter", "lat", "lon", "pano_id",
          "tile_num", "heading", "pitch", "roll", "height", "timestamp", "note")
NUMERIC_FIELDS = frozenset({"utm_east", "utm_north", "utm_zone_number", "lat", "lon", "tile_num",
                            "heading", "pitch", "roll", "height"})
_EXPECTED = {
    "utm_east": "a number (UTM easting in metres, e.g. 0551016.85)",
    "utm_north": "a number (UTM northing in metres, e.g. 4184313.91)",
    "utm_zone_number": "a number (e.g. 10)",
    "lat": "a number (latitude in degrees, e.g. 37.80271)",
    "lon": "a number (longitude in degrees, e.g. -122.42399)",
    "tile_num": "a number",
    "heading": "a number (heading in degrees, e.g. 180)",
    "pitch": "a number (degrees)",
    "roll": "a number (degrees)",
    "height": "a number (metres)",
}
_SEPARATORS = len(FIELDS) + 1  # 15 '@' in a well-formed name
_CHUNK = 65536  # names per numpy pass: keeps the temporaries in cache
_MAX_DIGITS = 17  # longer mantissas fall back to float()


@dataclass
class NameProblem:
    """One malformed name: its index in the list, its path as listed, the field at fault."""

    index: int
    path: str
    field: str | None
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class ParsedNames:
    """Parsed fields of a list of names (``values[field]`` has one entry per name)."""

    values: dict[str, np.ndarray]
    valid: np.ndarray
    problems: list[NameProblem] = dc_field(default_factory=list)
    num_problems: int = 0

    def __getitem__(self, name: str) -> np.ndarray:
        return self.values[name]

    @property
    def num_invalid(self) -> int:
        return int((~self.valid).sum())

    @property
    def utms(self) -> np.ndarray:
        """UTM (east, north) as float64 N x 2."""
        return np.stack([self.values["utm_east"], self.values["utm_north"]], axis=1)


@dataclass(frozen=True)
class VGName:
    """All fields of one name; empty numbers are NaN, empty text is ``""``."""

    utm_east: float
    utm_north: float
    utm_zone_number: float
    utm_zone_letter: str
    lat: float
    lon: float
    pano_id: str
    tile_num: float
    heading: float
    pitch: float
    roll: float
    height: float
    timestamp: str
    note: str


def parse_vg_name(path: str, required: Sequence[str] = ()) -> VGName:
    """Parse one path (convenience; use :func:`parse_vg_names` for many)."""
    parsed = parse_vg_names([path], fields=FIELDS, required=required)
    kw: dict[str, Any] = {}
    for name in FIELDS:
        v = parsed[name][0]
        kw[name] = float(v) if name in NUMERIC_FIELDS else os.fsdecode(bytes(v))
    return VGName(**kw)


def _num(value: float | None, fmt: str) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def format_vg_name(utm_east: float, utm_north: float, utm_zone_number: int | None = None,
                   utm_zone_letter: str = "", lat: float | None = None, lon: float | None = None,
                   pano_id: str = "", tile_num: int | None = None, heading: float | None = None,
                   pitch: float | None = None, roll: float | None = None, height: float | None = None,
                   timestamp: str = "", note: str = "", extension: str = ".jpg") -> str:
    """The file name of an image with these labels (None / "" leave a field empty)."""
    parts = [_num(utm_east, ".2f"), _num(utm_north, ".2f"), _num(utm_zone_number, "d"), utm_zone_letter,
             _num(lat, ".5f"), _num(lon, ".5f"), pano_id, _num(tile_num, "d"), _num(heading, "g"),
             _num(pitch, "g"), _num(roll, "g"), _num(height, "g"), timestamp, note]
    if any("@" in p or "/" in p for p in parts):
        raise ValueError(f"a field of an image name cannot contain '@' or '/': {parts}")
    return "@" + "@".join(parts) + "@" + extension


def vg_name_from_latlon(lat: float, lon: float, **fields: Any) -> str:
    """:func:`format_vg_name` with the UTM fields computed from latitude/longitude."""
    import utm

    east, north, number, letter = utm.from_latlon(lat, lon)
    return format_vg_name(float(east), float(north), int(number), letter, lat, lon, **fields)


def _as_buffer(names: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    if hasattr(names, "buffer") and hasattr(names, "starts"):
        arr = np.frombuffer(names.buffer, dtype=np.uint8)
        return arr, names.starts, names.ends, getattr(names, "origin", "")
    encoded = [os.fsencode(n) for n in names]
    lengths = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=len(encoded))
    ends = np.cumsum(lengths + 1) - 1
    arr = np.frombuffer(b"\n".join(encoded) + b"\n", dtype=np.uint8)
    return arr, ends - lengths, ends, ""


_POW10 = 10.0 ** np.arange(_MAX_DIGITS + 1)  # exact: every 10**k with k <= 22 is a float64
_EXACT_MANTISSA = 2**53  # integers up to here convert to float64 exactly


def _parse_decimal(arr: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vectorized ``[+-]digits[.digits]`` reader, column by column; returns (values, needs_fallback).

    The mantissa is accumulated exactly in int64. Where it is at most 2**53 (so exact as a
    float64) it is divided once by an exact power of ten (at most 10**17 < 10**22): a single
    correctly rounded division, the same float as ``float(text)`` (Clinger's fast path). Longer
    mantissas would round twice (to float64, then in the division), so those entries are read by
    numpy's correctly rounded string-to-float conversion instead.
    """
    n = starts.size
    mant = np.zeros(n, dtype=np.int64)
    digits = np.zeros(n, dtype=np.int64)
    dots = np.zeros(n, dtype=np.int64)
    dot_at = lengths - 1  # no dot: no fraction digits
    sign = neg = np.zeros(n, dtype=bool)
    full = int(lengths.min(initial=0))  # columns where every entry has a character
    for j in range(int(lengths.max(initial=0))):
        c = np.take(arr, starts + j, mode="clip")
        d = c - np.uint8(48)
        is_digit = d < 10
        dot = c == 46
        if j >= full:
            active = lengths > j
            is_digit &= active
            dot &= active
        mant = np.where(is_digit, mant * 10 + d, mant)
        digits += is_digit
        dots += dot
        dot_at = np.where(dot, j, dot_at)
        if j == 0:
            sign = ((c == 45) | (c == 43)) & (lengths > 0)
            neg = c == 45
    frac = np.clip(lengths - 1 - dot_at, 0, _MAX_DIGITS)
    bad = (digits + dots + sign != lengths) | (dots > 1) | (digits == 0) | (digits > _MAX_DIGITS)
    values = mant / _POW10[frac]
    if n:
        np.negative(values, out=values, where=neg)
    inexact = np.flatnonzero(~bad & (mant > _EXACT_MANTISSA))  # well-formed, but float64(mant) would round
    if inexact.size:
        values[inexact] = _gather_text(arr, starts[inexact], lengths[inexact]).astype(np.float64)
    return values, bad


def _gather_text(arr: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    width = max(int(lengths.max(initial=0)), 1)
    j = np.arange(width)
    chars = arr[np.minimum(starts[:, None] + j, arr.size - 1)]
    chars[j >= lengths[:, None]] = 0
    return np.ascontiguousarray(chars).view(f"S{width}").ravel()


def _field_message(field: str, text: str) -> str:
    number = FIELDS.index(field) + 1
    if text == "":
        return (f"field {number} '{field}' is empty but it is needed here; expected "
                f"{_EXPECTED.get(field, 'a non-empty value')}")
    return f"field {number} '{field}' is {text!r}; expected {_EXPECTED[field]}"


def parse_vg_names(names: Any, fields: Sequence[str] = ("utm_east", "utm_north"),
                   required: Sequence[str] = ("utm_east", "utm_north"), *, errors: str = "raise",
                   max_problems: int = 1000) -> ParsedNames:
    """Parse ``fields`` of every name of ``names`` (an ImageList or a sequence of paths).

    ``required`` fields must be present (non-empty, finite). With ``errors="raise"`` the first
    malformed name raises :class:`DatasetError`; with ``errors="collect"`` malformed names are
    marked in ``valid`` (their values NaN) and the first ``max_problems`` are described.
    """
    unknown = [f for f in (*fields, *required) if f not in FIELDS]
    if unknown:
        raise ValueError(f"unknown field(s) {unknown}; choose from {FIELDS}")
    if errors not in ("raise", "collect"):
        raise ValueError("errors must be 'raise' or 'collect'")
    fields = tuple(dict.fromkeys((*fields, *required)))
    if errors == "raise":
        max_problems = 1  # only the first one is shown
    arr, starts, ends, origin = _as_buffer(names)
    n = int(starts.size)
    values = {f: (np.full(n, np.nan) if f in NUMERIC_FIELDS else np.zeros(n, dtype="S1")) for f in fields}
    text_parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {f: [] for f in fields if f not in NUMERIC_FIELDS}
    valid = np.ones(n, dtype=bool)
    result = ParsedNames(values, valid)

    pending: list[tuple[int, str | None, str]] = []

    def report(rows: np.ndarray, fld: str | None, message: Callable[[int], str]) -> None:
        """Mark ``rows`` (ascending) invalid; describe the first ones (``message(k)`` for rows[k])."""
        valid[rows] = False
        result.num_problems += int(rows.size)
        for k in range(min(int(rows.size), max_problems - len(result.problems))):
            pending.append((int(rows[k]), fld, message(k)))

    def keep_first_problems() -> None:  # chunks come in index order: the first ones are final
        pending.sort(key=lambda p: p[0])
        for i, fld, message in pending[: max_problems - len(result.problems)]:
            path = os.fsdecode(arr[starts[i] : ends[i]].tobytes())
            result.problems.append(NameProblem(i, path, fld, message))
        pending.clear()

    def text_of(fs: np.ndarray, fl: np.ndarray, r: int) -> str:
        return os.fsdecode(arr[fs[r] : fs[r] + fl[r]].tobytes())

    for a in range(0, n, _CHUNK):
        s, e = starts[a : a + _CHUNK], ends[a : a + _CHUNK]
        m = s.size
        b0, b1 = int(s[0]), int(e[-1])
        seg = arr[b0:b1]
        slashes = np.flatnonzero(seg == 47) + b0
        k = np.searchsorted(slashes, e) - 1
        cand = slashes[np.maximum(k, 0)] + 1 if slashes.size else np.zeros(m, dtype=np.int64)
        name_start = np.where((k >= 0) & (cand > s), cand, s)
        ats = np.flatnonzero(seg == 64) + b0
        first = np.searchsorted(ats, name_start)  # the '@' of each name, by a merge of sorted arrays
        count = np.searchsorted(ats, e) - first
        begins = (np.take(arr, name_start, mode="clip") == 64) & (name_start < e)
        good = (count == _SEPARATORS) & begins
        bad = np.flatnonzero(~good)
        report(bad + a, None, lambda j: (
            f"expected the file name to start with '@' and hold {len(FIELDS)} fields between "
            f"{_SEPARATORS} '@', found {int(count[bad[j]])} '@'"
            + ("" if begins[bad[j]] else " and a name that does not start with '@'")))
        pos = ats[first[good][:, None] + np.arange(_SEPARATORS)] if ats.size else np.zeros((0, _SEPARATORS), np.int64)
        rows = np.flatnonzero(good) + a
        for f in fields:
            fi = FIELDS.index(f)
            fs = pos[:, fi] + 1
            fl = pos[:, fi + 1] - fs
            if f not in NUMERIC_FIELDS:
                text_parts[f].append((rows, _gather_text(arr, fs, fl)))
                if f in required:
                    report(rows[fl == 0], f, lambda j, f=f: _field_message(f, ""))
                continue
            vals, fallback = _parse_decimal(arr, fs, fl)
            empty = fl == 0
            vals[empty] = np.nan
            unreadable = np.zeros(fl.size, dtype=bool)
            for r in np.flatnonzero(fallback & ~empty):  # '1e3', 'nan', or not a number at all
                try:
                    vals[r] = float(text_of(fs, fl, r))
                except ValueError:
                    vals[r] = np.nan
                    unreadable[r] = True
            if f in required:
                unreadable |= ~np.isfinite(vals)
            idx = np.flatnonzero(unreadable)
            report(rows[idx], f, lambda j, f=f, fs=fs, fl=fl, idx=idx: _field_message(f, text_of(fs, fl, idx[j])))
            values[f][rows] = vals
        keep_first_problems()
    for f, parts in text_parts.items():
        width = max((p[1].dtype.itemsize for p in parts), default=1)
        out = np.zeros(n, dtype=f"S{width}")
        for rows, texts in parts:
            out[rows] = texts
        values[f] = out
    for f in fields:
        if f in NUMERIC_FIELDS:
            values[f][~valid] = np.nan
    if errors == "raise" and result.num_problems:
        first = result.problems[0]
        more = result.num_problems - 1
        raise DatasetError(
            f"malformed image name {first.path!r}" + (f" ({origin})" if origin else "")
            + f": {first.message}. Image file names must have the form {NAME_TEMPLATE}"
            + (f" ({more} more problem(s); `progeo check-dataset FOLDER` lists them all)" if more else "")
        )
    return result
