"""Matching keys of place and country names, shared by :mod:`progeo.geo.places` and :mod:`progeo.geo.countries`."""

from __future__ import annotations

import unicodedata


def place_key(text: str) -> str:
    """Matching key of a place name: accents stripped, case-folded, ``_`` as space, spaces collapsed."""
    decomposed = unicodedata.normalize("NFKD", text.replace("_", " "))
    plain = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(plain.casefold().split())
