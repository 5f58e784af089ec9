"""World sizes. Image counts per city follow from the fields; totals are in the package docstring.

Train: ``train_cells`` CosPlace cells (10 m of street each) per city, ``positions_per_cell``
panoramas per cell and capture year, ``headings`` views per panorama (one per 30-degree bin),
so every class gets ``positions_per_cell * len(train_years)`` images (>= 10, the CosPlace
default minimum). Val/test: a database panorama every ``db_spacing`` metres along held-out
streets with ``db_headings`` views, and queries a few metres away from database positions.
With 10 m spacing about 1/6 of a city's database lies within 25 m of a query, so telling the
city apart is not enough to localize a query.
"""

from __future__ import annotations

from dataclasses import dataclass

from progeo.errors import ConfigError

ALL_CITIES = ("Lisbon", "Porto", "Oslo", "Bergen", "Kyoto", "Marrakesh")


@dataclass(frozen=True)
class Preset:
    name: str
    cities: tuple[str, ...]
    image_size: int
    train_cells: int
    positions_per_cell: int = 4
    train_years: tuple[int, ...] = (2013, 2016, 2019)
    headings: int = 12
    val_db_length: float = 80.0
    test_db_length: float = 160.0
    db_spacing: float = 10.0
    db_headings: int = 8
    val_queries: int = 15
    test_queries: int = 20
    db_year: int = 2017
    query_years: tuple[int, int, int] = (2021, 2020, 2022)  # day, night, occlusion
    fov: float = 75.0

    def images_per_city(self) -> dict[str, int]:
        def db(length: float) -> int:
            return len(db_offsets(length, self.db_spacing)) * self.db_headings

        return {
            "train": self.train_cells * self.positions_per_cell * len(self.train_years) * self.headings,
            "val": db(self.val_db_length) + self.val_queries,
            "test": db(self.test_db_length) + 3 * self.test_queries,
        }

    def total_images(self) -> int:
        return sum(self.images_per_city().values()) * len(self.cities)


def db_offsets(length: float, spacing: float) -> list[float]:
    """Positions (metres from the start of the covered street) of database panoramas."""
    count = max(int(length // spacing), 1)
    return [spacing * (i + 0.5) for i in range(count)]


PRESETS: dict[str, Preset] = {
    "tiny": Preset("tiny", ("Lisbon", "Porto", "Oslo"), 64, train_cells=3, val_db_length=60.0,
                   test_db_length=80.0, val_queries=10, test_queries=10),
    "small": Preset("small", ALL_CITIES, 128, train_cells=5, val_db_length=80.0, test_db_length=160.0,
                    val_queries=15, test_queries=20),
    "default": Preset("default", ALL_CITIES, 128, train_cells=10, val_db_length=120.0,
                      test_db_length=300.0, val_queries=25, test_queries=40),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ConfigError(f"unknown synthetic world preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
