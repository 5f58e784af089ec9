"""The authors' (CosPlace / ProGEO) group and class numbering, and prompts remapped onto progeo's."""

import math
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from progeo.cli import main as cli_main
from progeo.data.authors_order import authors_order
from progeo.data.groups import GroupsConfig, build_groups
from progeo.data.image_lists import ImageList
from progeo.data.train_sets import TrainSet
from progeo.data.vg_names import format_vg_name, parse_vg_names
from progeo.errors import ConfigError
from progeo.models.importers import import_prompts
from progeo.models.prompts import load_prompts, prompt_group_ids, save_prompts, PromptLearner

CONFIG = GroupsConfig(min_images_per_class=3)


def _names(n=4000, seed=0):
    """Image names over a 120 m square in a random (unsorted) list order."""
    rng = np.random.default_rng(seed)
    east, north = 550000 + rng.uniform(0, 120, n), 4180000 + rng.uniform(0, 120, n)
    heading = rng.uniform(0, 360, n).round(1)
    return [f"d{i % 4}/" + format_vg_name(e, no, 10, "S", heading=h) for i, (e, no, h) in
            enumerate(zip(east, north, heading))]


def _class_and_group(name, c: GroupsConfig):
    f = name.split("/")[-1].split("@")
    e, n, h = float(f[1]), float(f[2]), float(f[9])
    cid = (math.floor(e / c.M) * c.M, math.floor(n / c.M) * c.M, math.floor(h / c.alpha) * c.alpha)
    return cid, ((cid[0] // c.M) % c.N, (cid[1] // c.M) % c.N, (cid[2] // c.alpha) % c.L)


def _authors_reference(names, c: GroupsConfig):
    """The authors' numbering, from the facts: groups in order of first appearance (a dict keeps
    insertion order), classes of a group in the iteration order of a set filled image by image."""
    counts = Counter(_class_and_group(n, c)[0] for n in names)
    per_group: dict = {}
    for name in names:
        cid, gid = _class_and_group(name, c)
        if counts[cid] >= c.min_images_per_class:
            per_group.setdefault(gid, set()).add(cid)
    return [(gid, list(classes)) for gid, classes in per_group.items()]


def _train_set(names, source=Path("train_images_paths.txt")):
    images = ImageList.from_relative_paths("train", names, source=source)
    p = parse_vg_names(images, fields=("utm_east", "utm_north", "heading"), required=("utm_east", "utm_north", "heading"))
    return TrainSet(images, build_groups(p["utm_east"], p["utm_north"], p["heading"], CONFIG))


def _authors_prompts(reference, width=8):
    """Prompt learners in the authors' numbering: row k of group i holds that class's id."""
    learners = []
    for _, classes in reference:
        ctx = torch.zeros(len(classes), 2, width)
        ctx[:, 0, :3] = torch.tensor(classes, dtype=torch.float32)
        tokens = torch.zeros(1, 16, dtype=torch.long)
        tokens[0, 8] = 49407  # end of text
        learners.append({"cls_ctx": ctx, "token_prefix": torch.zeros(1, 5, width),
                         "token_suffix": torch.zeros(1, 9, width), "tokenized_prompts": tokens})
    return learners


def test_authors_order_matches_the_reference():
    names = _names()
    reference = _authors_reference(names, CONFIG)
    train = _train_set(names)
    order = authors_order(train.images, train.groups)
    assert [g.group_id for g in order] == [gid for gid, _ in reference]
    for group, (_, classes) in zip(order, reference):
        assert [tuple(train.groups.class_ids[c]) for c in group.classes] == classes
    # the authors' class order is not progeo's sorted one (else this test would prove nothing)
    assert any(list(g.classes) != sorted(g.classes) for g in order)
    assert [g.group_id for g in order] != sorted(g.group_id for g in order)


def test_imported_prompts_rows_land_on_progeo_classes(tmp_path):
    names = _names(seed=1)
    reference = _authors_reference(names, CONFIG)
    train = _train_set(names)
    torch.save(_authors_prompts(reference[:3]), tmp_path / "last_prompt_learners.pth")
    out = tmp_path / "p.safetensors"
    info = import_prompts(tmp_path / "last_prompt_learners.pth", out, train_set=train)
    learners, meta = load_prompts(out)
    assert meta.extra["class_order"] == "progeo" and prompt_group_ids(out) == [gid for gid, _ in reference[:3]]
    groups = train.groups
    ids = {tuple(g): i for i, g in enumerate(groups.group_ids.tolist())}
    for learner, (gid, classes) in zip(learners, reference):
        g = ids[gid]
        progeo_classes = groups.class_ids[groups.classes_of_group(g)]  # progeo label j -> class id
        assert learner.n_classes == len(classes) == info.classes_per_group[reference.index((gid, classes))]
        np.testing.assert_array_equal(learner.cls_ctx[:, 0, :3].detach().numpy(), progeo_classes.astype(np.float32))


def test_import_prompts_refuses_what_it_cannot_remap(tmp_path):
    names = _names(seed=2)
    reference = _authors_reference(names, CONFIG)
    torch.save(_authors_prompts(reference[:2]), tmp_path / "a.pth")
    with pytest.raises(ConfigError, match="--train-set FOLDER.*--keep-order"):
        import_prompts(tmp_path / "a.pth", tmp_path / "o.safetensors")
    other = _train_set(_names(seed=3))  # another train set: other class counts
    with pytest.raises(ConfigError, match="does not match the train set's classes in the authors' order"):
        import_prompts(tmp_path / "a.pth", tmp_path / "o.safetensors", train_set=other)
    walked = _train_set(names[:-1] + [names[-1].replace(".jpg", ".JPG")], source=None)
    with pytest.raises(ConfigError, match=r"globs \*\*/\*.jpg"):
        import_prompts(tmp_path / "a.pth", tmp_path / "o.safetensors", train_set=walked)
    info = import_prompts(tmp_path / "a.pth", tmp_path / "o.safetensors", keep_order=True)
    assert info.classes_per_group == [len(c) for _, c in reference[:2]]
    assert prompt_group_ids(tmp_path / "o.safetensors") is None


def test_import_prompts_cli_with_a_train_folder(tmp_path, capsys):
    names = sorted(_names(n=1500, seed=4))  # a folder walk lists them sorted, as the authors' glob
    root = tmp_path / "train"
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).touch()
    reference = _authors_reference(names, GroupsConfig(min_images_per_class=2))
    torch.save(_authors_prompts(reference[:1]), tmp_path / "a.pth")
    out = tmp_path / "cli.safetensors"
    args = ["import-prompts", str(tmp_path / "a.pth"), "--out", str(out)]
    assert cli_main(args) == 2
    assert "--train-set" in capsys.readouterr().err
    assert cli_main(args + ["--train-set", str(root), "--min-images-per-class", "2"]) == 0
    assert "classes remapped to progeo's order" in capsys.readouterr().out
    assert prompt_group_ids(out) == [reference[0][0]]


def test_stage2_trains_the_groups_the_imported_prompts_name(tmp_path):
    from progeo.train.stage2_setup import _train_groups

    train = _train_set(_names(seed=5))
    ids = [tuple(g) for g in train.groups.group_ids.tolist()]
    chosen = [ids[3], ids[0]]
    pls = [PromptLearner(torch.zeros(1, 2, 8), torch.zeros(1, 5, 8), torch.zeros(1, 9, 8), torch.zeros(1, 16), 8)
           for _ in range(2)]
    save_prompts(tmp_path / "p.safetensors", pls, extra={"group_ids": [list(g) for g in chosen]})
    cfg = SimpleNamespace(prompts=str(tmp_path / "p.safetensors"), loss=SimpleNamespace(text_loss=True), groups_num=2)
    assert [tuple(train.groups.group_ids[g.index]) for g in _train_groups(cfg, train)] == chosen
    cfg.groups_num = 3
    with pytest.raises(ConfigError, match="hold 2 group"):
        _train_groups(cfg, train)
    cfg.groups_num, cfg.prompts = 2, None
    cfg.loss.text_loss = False
    assert [g.index for g in _train_groups(cfg, train)] == [0, 1]


def test_python37_tuple_hash_and_order():
    from progeo.data.authors_order import _tuple_hash_py37

    # hash() of these tuples printed by a CPython 3.7.16 interpreter (64-bit)
    known = {(550000, 4180000, 30): -3601028952043101407, (-40, -20, 330): 7891948859739374153,
             (0, 0, 0): 1267304713960822739}
    assert {t: _tuple_hash_py37(t) for t in known} == known
    names = _names(seed=6)
    train = _train_set(names)
    new, old = authors_order(train.images, train.groups), authors_order(train.images, train.groups, python="3.7")
    assert [g.group_id for g in new] == [g.group_id for g in old]  # groups: first appearance either way
    assert any(list(a.classes) != list(b.classes) for a, b in zip(new, old))
    assert all(sorted(a.classes) == sorted(b.classes) for a, b in zip(new, old))
    with pytest.raises(ConfigError, match="3.8 or 3.7"):
        authors_order(train.images, train.groups, python="3.6")


def _python37():
    import shutil

    for candidate in (shutil.which("python3.7"), str(Path.home() / ".pyenv/versions/3.7.16/bin/python")):
        if candidate and Path(candidate).is_file():
            import subprocess

            if subprocess.run([candidate, "-c", "import sys; assert sys.version_info[:2] == (3, 7)"],
                              capture_output=True).returncode == 0:
                return candidate
    return None


@pytest.mark.skipif(_python37() is None, reason="no Python 3.7 interpreter here")
def test_python37_order_matches_a_real_python37(tmp_path):
    import json
    import subprocess

    names = _names(n=2000, seed=7)
    (tmp_path / "names.json").write_text(json.dumps(names))
    # the reference above, run by Python 3.7 itself
    script = ("import json, math, sys\nfrom collections import Counter\nnames = json.load(open(sys.argv[1]))\n"
              "def cg(name):\n    f = name.split('/')[-1].split('@')\n    e, n, h = float(f[1]), float(f[2]), float(f[9])\n"
              "    c = (math.floor(e / 10) * 10, math.floor(n / 10) * 10, math.floor(h / 30) * 30)\n"
              "    return c, ((c[0] // 10) % 5, (c[1] // 10) % 5, (c[2] // 30) % 2)\n"
              "counts = Counter(cg(n)[0] for n in names)\nper = {}\nfor name in names:\n    c, g = cg(name)\n"
              "    if counts[c] >= 3:\n        per.setdefault(g, set()).add(c)\n"
              "print(json.dumps([[list(g), [list(c) for c in s]] for g, s in per.items()]))\n")
    out = subprocess.run([_python37(), "-c", script, str(tmp_path / "names.json")], capture_output=True, text=True, check=True)
    reference = [(tuple(g), [tuple(c) for c in cs]) for g, cs in json.loads(out.stdout)]
    train = _train_set(names)
    order = authors_order(train.images, train.groups, python="3.7")
    assert [(g.group_id, [tuple(train.groups.class_ids[c]) for c in g.classes]) for g in order] == reference
