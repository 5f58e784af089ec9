"""Reading the CSV files of GEM (candidate places, labelled image lists): rows, columns, coordinates.

Shared by :mod:`progeo.geo.places` and :mod:`progeo.geo.labelled_images`; every problem is a
:class:`~progeo.errors.DatasetError` naming the file, the line and the column.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

from progeo.errors import DatasetError, reading


def read_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header (lower-cased, stripped) and ``(line number, fields)`` rows; ragged rows are errors."""
    if not path.is_file():
        raise DatasetError(f"{path}: file not found; check the path")
    with reading(path, "CSV file", "save it as UTF-8 comma-separated text with a header line"), \
            open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or not any(h.strip() for h in header):
            raise DatasetError(f"{path}: the file is empty; it needs a header line naming its columns")
        header = [h.strip().lower() for h in header]
        rows = []
        for fields in reader:
            if not fields or not any(x.strip() for x in fields):
                continue
            if len(fields) != len(header):
                raise DatasetError(
                    f"{path}, line {reader.line_num}: {len(fields)} fields but the header has {len(header)}; "
                    f"quote fields that contain commas"
                )
            rows.append((reader.line_num, [x.strip() for x in fields]))
    if not rows:
        raise DatasetError(f"{path}: no data rows after the header")
    return header, rows


def find_column(header: Sequence[str], aliases: Sequence[str]) -> int | None:
    """Index of the first of ``aliases`` in ``header``, or ``None``."""
    for alias in aliases:
        if alias in header:
            return header.index(alias)
    return None


def check_coord(column: str, text: str, limit: float) -> tuple[float, str]:
    """``(value, "")`` for a valid coordinate in [-limit, limit], else ``(nan, what is wrong)``."""
    if not text:
        return float("nan"), f"column '{column}': empty value; fill in the {column} in decimal degrees"
    try:
        value = float(text)
    except ValueError:
        return float("nan"), f"column '{column}': {text!r} is not a number; write decimal degrees"
    if not -limit <= value <= limit:
        return float("nan"), (
            f"column '{column}': {value} is outside [-{limit:g}, {limit:g}]; check that lat and lon are not swapped"
        )
    return value, ""


def parse_coord(path: Path, line: int, column: str, text: str, limit: float) -> float:
    """The coordinate, or a :class:`DatasetError` naming ``path``, ``line`` and what is wrong."""
    value, problem = check_coord(column, text, limit)
    if problem:
        raise DatasetError(f"{path}, line {line}, {problem}")
    return value
