"""The @-separated file-name format: fields, vectorized parsing, errors that name the file."""

import math

import numpy as np
import pytest

from progeo.data.image_lists import ImageList
from progeo.data.vg_names import (FIELDS, NAME_TEMPLATE, format_vg_name, parse_vg_name, parse_vg_names,
                                  vg_name_from_latlon)
from progeo.errors import DatasetError

FULL = "@0551016.85@4184313.91@10@S@037.80271@-122.42399@mSXP8O6bNuPZ4y-DLHvpuQ@3@180@-5.5@0@2.5@201311@my note@.jpg"


def test_every_field_of_a_full_name():
    v = parse_vg_name("train/37/" + FULL)
    assert (v.utm_east, v.utm_north) == (551016.85, 4184313.91)
    assert (v.utm_zone_number, v.utm_zone_letter) == (10.0, "S")
    assert (v.lat, v.lon) == (37.80271, -122.42399)
    assert v.pano_id == "mSXP8O6bNuPZ4y-DLHvpuQ" and v.tile_num == 3.0
    assert (v.heading, v.pitch, v.roll, v.height) == (180.0, -5.5, 0.0, 2.5)
    assert (v.timestamp, v.note) == ("201311", "my note")


def test_at_signs_in_parent_folders_do_not_shift_fields():
    for parent in ("/data/a@b/", "x@1@2@3@/y@/", "@@@/", "/srv/sf@xl/processed/train/37@-122/"):
        v = parse_vg_name(parent + FULL)
        assert (v.utm_east, v.utm_north, v.heading) == (551016.85, 4184313.91, 180.0)


@pytest.mark.parametrize("ext", [".jpg", ".JPG", ".png", ".PNG", ".jpeg", ".JPEG"])
def test_extensions(ext):
    v = parse_vg_name("d/" + FULL[: -len(".jpg")] + ext)
    assert v.heading == 180.0 and v.note == "my note"


def test_empty_fields_are_nan_or_empty_when_not_required():
    name = format_vg_name(500000.0, 4000000.0)
    v = parse_vg_name(name)
    assert (v.utm_east, v.utm_north) == (500000.0, 4000000.0)
    assert math.isnan(v.heading) and math.isnan(v.lat) and math.isnan(v.utm_zone_number)
    assert v.pano_id == "" and v.timestamp == "" and v.utm_zone_letter == ""


def test_empty_required_field_is_an_error_naming_file_and_field():
    name = "train/" + format_vg_name(500000.0, 4000000.0)  # no heading
    with pytest.raises(DatasetError) as err:
        parse_vg_names([name], fields=("utm_east", "utm_north", "heading"), required=("utm_east", "utm_north", "heading"))
    msg = str(err.value)
    assert name in msg and "field 9 'heading' is empty" in msg and NAME_TEMPLATE in msg


def test_utm_is_required_by_default():
    with pytest.raises(DatasetError, match="field 1 'utm_east' is empty"):
        parse_vg_names([_name(utm_north=4000000)])


def _name(**fields):
    values = [str(fields.get(f, "")) for f in FIELDS]
    return "@" + "@".join(values) + "@.jpg"


@pytest.mark.parametrize("name, expected", [
    ("q/@1@2@.jpg", "found 3 '@'"),
    ("q/img_001.jpg", "found 0 '@' and a name that does not start with '@'"),
    ("q/x" + _name(utm_east=1, utm_north=2, heading=3)[1:], "does not start with '@'"),
    ("q/" + _name(utm_east=1, utm_north=2, heading=3, note="a@b"), "found 16 '@'"),
    ("q/" + _name(utm_east="abc", utm_north=2, heading=3), "field 1 'utm_east' is 'abc'; expected a number"),
    ("q/" + _name(utm_east="1.2.3", utm_north=2, heading=3), "field 1 'utm_east' is '1.2.3'"),
    ("q/" + _name(utm_east=1, utm_north=2), "field 9 'heading' is empty"),
    ("q/" + _name(utm_east=1, utm_north=2, heading="north"), "field 9 'heading' is 'north'"),
    ("q/" + _name(utm_east=1, utm_north="nan", heading=3), "field 2 'utm_north' is 'nan'"),
])
def test_malformed_names(name, expected):
    with pytest.raises(DatasetError) as err:
        parse_vg_names([name], fields=("utm_east", "utm_north", "heading"), required=("utm_east", "utm_north", "heading"))
    msg = str(err.value)
    assert expected in msg and repr(name) in msg and NAME_TEMPLATE in msg


def test_error_names_the_paths_file_and_counts_the_others(tmp_path):
    names = ["a/" + FULL, "a/@1@2@.jpg", "a/bad.jpg", "a/" + FULL]
    images = ImageList.from_relative_paths(tmp_path, names, source=tmp_path / "x_images_paths.txt")
    with pytest.raises(DatasetError) as err:
        parse_vg_names(images)
    msg = str(err.value)
    assert "x_images_paths.txt" in msg and "'a/@1@2@.jpg'" in msg and "1 more problem" in msg


def test_collect_mode_marks_and_lists_problems():
    names = [FULL, "@1@2@.jpg", FULL, _name(utm_east="x", utm_north=2), "noat.jpg"]
    parsed = parse_vg_names(names, errors="collect", max_problems=2)
    assert parsed.valid.tolist() == [True, False, True, False, False]
    assert parsed.num_problems == 3 and len(parsed.problems) == 2
    assert [p.index for p in parsed.problems] == [1, 3]
    assert parsed.problems[1].field == "utm_east" and parsed.problems[1].path.startswith("@x@")
    assert np.isnan(parsed["utm_east"][[1, 3, 4]]).all()
    assert parsed.utms.shape == (5, 2) and parsed.utms.dtype == np.float64


def test_vectorized_numbers_equal_python_float():
    rng = np.random.default_rng(0)
    texts = [f"{v:.2f}" for v in rng.uniform(-1e7, 1e7, 300)] + [f"{v:011.3f}" for v in rng.uniform(0, 1e6, 300)]
    texts += ["0", "-0", "+7", "7.", ".5", "-.25", "123456789012345", "0000000001.5", str(2.0 ** 52 + 1), "1e3", "-2.5E-2"]
    names = [_name(utm_east=t, utm_north=t, heading=t) for t in texts]
    parsed = parse_vg_names(names, fields=("utm_east", "heading"))
    assert parsed.valid.all()
    assert parsed["utm_east"].tolist() == [float(t) for t in texts]
    assert parsed["heading"].tolist() == [float(t) for t in texts]


def test_text_fields_are_bytes_arrays_and_all_fields_accessible():
    names = [FULL, format_vg_name(1.0, 2.0, pano_id="p", note="n")]
    parsed = parse_vg_names(names, fields=FIELDS)
    assert parsed["pano_id"].tolist() == [b"mSXP8O6bNuPZ4y-DLHvpuQ", b"p"]
    assert parsed["note"].tolist() == [b"my note", b"n"]
    assert parsed["pitch"][0] == -5.5 and np.isnan(parsed["pitch"][1])


def test_format_and_latlon_round_trip():
    name = vg_name_from_latlon(37.7749, -122.4194, heading=90, pano_id="abc", timestamp="201906")
    v = parse_vg_name(name)
    assert v.utm_zone_number == 10 and v.utm_zone_letter == "S" and v.heading == 90.0
    assert 540000 < v.utm_east < 560000 and 4170000 < v.utm_north < 4190000
    with pytest.raises(ValueError):
        format_vg_name(1.0, 2.0, note="a@b")


def test_unknown_field_is_rejected():
    with pytest.raises(ValueError, match="unknown field"):
        parse_vg_names([FULL], fields=("yaw",))


def _edge_case_numbers(n: int, seed: int = 0) -> list[str]:
    """16-17 digit mantissas with the point anywhere, signs, exponents, and decimals next to the
    midpoint between two neighbouring float64 values (where rounding twice goes wrong)."""
    from decimal import Decimal

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        kind = i % 4
        if kind < 2:  # a random 16- or 17-digit mantissa
            digits = str(int(rng.integers(10**15, 10**17)))
        else:  # the 17 leading digits of the midpoint above a random double (rounded down or up)
            x = float(rng.uniform(1e-3, 1e7))
            mid = (Decimal(x) + Decimal(np.nextafter(x, np.inf))) / 2
            digits = f"{mid:.16e}".split("e")[0].replace(".", "")
            if kind == 3:
                digits = str(int(digits) + 1)
        point = int(rng.integers(0, len(digits) + 1))
        text = digits[:point] + "." + digits[point:] if point < len(digits) else digits
        if rng.random() < 0.5:
            text = "-" + text
        if i % 7 == 0:
            text += f"e{int(rng.integers(-5, 6))}"
        out.append(text)
    return out


def test_long_mantissas_parse_bit_for_bit_like_python_float():
    texts = _edge_case_numbers(6000)
    names = [_name(utm_east=t, utm_north=t) for t in texts]
    parsed = parse_vg_names(names, fields=("utm_east",))
    assert parsed.valid.all()
    expected = np.array([float(t) for t in texts])
    got = parsed["utm_east"]
    wrong = np.flatnonzero(got.view(np.int64) != expected.view(np.int64))
    assert wrong.size == 0, f"{wrong.size} of {len(texts)} differ, e.g. {texts[wrong[0]]!r}: {got[wrong[0]]!r}"
