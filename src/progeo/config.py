"""Configuration of the training stages: dataclasses whose defaults are the paper's values.

Every field is a command-line flag (``--field-name``) and a key of a YAML/JSON config file
(``--config FILE``); flags given on the command line override the file, the file overrides
the defaults. A key that is not a field is an error naming the key and the file.

- :class:`PretrainConfig`: contrastive image-text pretraining of a tiny CLIP (our demo's
  substitute for OpenAI's weights; not part of the paper).
- :class:`Stage1Config`: ProGEO stage 1, prompt learning (SPEC 1.4).
- :class:`Stage2Config`: ProGEO stage 2, image encoder training with the prompts (SPEC 1.5);
  ``text_loss=False`` is plain CosPlace on the same backbone.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, TypeVar

from progeo.errors import ConfigError, reading

C = TypeVar("C")


@dataclass
class RunConfig:
    """Fields every training command has."""

    out_dir: str = "runs/run"  # the run folder (config, logs, metrics, checkpoints)
    device: str = "auto"  # cpu, cuda, cuda:N, mps or auto
    seed: int = 0
    amp: bool = True  # mixed precision where the device supports it (CUDA, MPS); float32 on CPU
    num_workers: int = 0  # image decoding processes (0: in the main process)
    progress: bool = True  # tqdm progress bars
    tensorboard: bool = True  # TensorBoard event files beside the CSV logs
    threads: int | None = None  # torch CPU threads during the run (None: torch's default; 1 suits tiny models)

    def check(self) -> None:
        _positive(self, "num_workers", allow_zero=True)
        if self.threads is not None:
            _positive(self, "threads")


@dataclass
class ResumeFields:
    """Checkpointing and resuming (:mod:`progeo.train.resume`); every training stage has them."""

    checkpoint_every: int = 1000  # also save the resumable state every N steps of an epoch (0: epoch ends only)
    resume: str | None = None  # a run folder to continue from its last checkpoint
    overwrite: bool = False  # start afresh in an out_dir that already holds a run (its logs and state are deleted)
    stop_after: int | None = None  # debug: stop (as if killed) after this many training steps of this process

    def check(self) -> None:
        super().check()
        _positive(self, "checkpoint_every", allow_zero=True)
        if self.stop_after is not None and self.stop_after < 1:
            raise ConfigError(f"stop_after={self.stop_after} must be >= 1 (or unset)")
        if self.resume and self.overwrite:
            raise ConfigError(f"resume={self.resume!r} and overwrite contradict each other: drop --overwrite to "
                              "continue the run, or drop --resume to start it again")


@dataclass
class GroupsFields:
    """CosPlace partition (SPEC 1.2); turned into :class:`progeo.data.groups.GroupsConfig`."""

    M: int = 10  # metres per class cell
    alpha: int = 30  # degrees per heading bin
    N: int = 5  # cells between classes of one group
    L: int = 2  # heading bins between classes of one group
    min_images_per_class: int = 10
    groups_cache_dir: str | None = None  # where the partition is cached (default ~/.cache/progeo)

    def groups_config(self):
        from progeo.data.groups import GroupsConfig

        return GroupsConfig(M=self.M, alpha=self.alpha, N=self.N, L=self.L, min_images_per_class=self.min_images_per_class)


@dataclass
class PretrainConfig(ResumeFields, RunConfig):
    """CLIP pretraining from scratch on a synthetic world's captions (``WORLD/captions.tsv``)."""

    world: str = ""  # synthetic world folder (captions.tsv, labels.csv, train/, val/, test/)
    backbone: str = "tiny-rn"  # an open_clip architecture (tiny-rn, tiny-vit, ...), random init
    out_dir: str = "runs/pretrain"
    image_size: int = 64
    epochs: int = 4
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 0.1
    warmup_steps: int = 50
    init_temperature: float = 0.07  # logit scale starts at 1/T and is learned (capped at 100)
    augment: bool = True  # random resized crop + colour jitter on the device
    max_images: int | None = None  # use at most this many captioned images (None: all)
    eval_batch_size: int = 256
    zeroshot_template: str = "a street view photo taken in {city}, {country}."

    def check(self) -> None:
        super().check()
        for name in ("image_size", "epochs", "batch_size", "eval_batch_size"):
            _positive(self, name)
        _positive(self, "lr")
        _positive(self, "weight_decay", allow_zero=True)
        _positive(self, "warmup_steps", allow_zero=True)
        if not 0 < self.init_temperature < 1:
            raise ConfigError(f"init_temperature={self.init_temperature} must lie in (0, 1), e.g. 0.07")
        if self.batch_size < 2:
            raise ConfigError("batch_size must be at least 2 for a contrastive loss")
        if "{city}" not in self.zeroshot_template:
            raise ConfigError(f"zeroshot_template {self.zeroshot_template!r} needs a {{city}} placeholder")


@dataclass
class ModelFields:
    """The CLIP backbone a stage starts from."""

    backbone: str = "RN50:openai"  # ARCH[:TAG]: RN50:openai, ViT-B/16:openai, tiny-vit, ...
    weights: str | None = None  # local weights file instead of a download (e.g. a pretrain checkpoint)
    quick_gelu: bool | None = None  # None: what the weights say


@dataclass
class Stage1Config(GroupsFields, ModelFields, ResumeFields, RunConfig):
    """ProGEO stage 1: learn one prompt learner per group on cached, frozen image features."""

    train_set: str = ""  # training folder of @-named images
    out_dir: str = "runs/stage1"
    # The authors' README runs stage 1 with 1 group, but stage 2 trains 8 and needs prompts for every
    # group it trains, so their defaults do not chain. We default to stage 2's 8 groups; the 480 epochs
    # are spread over them (epoch e trains group e mod groups_num, 60 epochs per group).
    groups_num: int = 8  # groups that get prompts (stage 2's default; the authors' README uses 1)
    epochs: int = 480  # in total; epoch e trains group e mod groups_num
    batch_size: int = 512
    lr: float = 0.01
    lr_schedule: str = "per_group"  # per_group: one cosine per group over its epochs (the authors'); global: one over all epochs
    weight_decay: float = 0.0
    template: str = "A photo of a X X X X street."
    temperature: float = 1.0  # SupCon tau; the authors use raw features with tau = 1
    normalize_features: bool = False  # L2-normalise both sides before SupCon (then lower tau)
    image_size: int | None = None  # feature extraction size (None: the backbone's native size, 224 for the paper's)
    feature_cache_dir: str | None = None  # default: ~/.cache/progeo/features
    feature_batch_size: int = 128

    def check(self) -> None:
        super().check()
        self.groups_config()  # validates M, alpha, N, L, min_images_per_class
        for name in ("groups_num", "epochs", "batch_size", "feature_batch_size"):
            _positive(self, name)
        _positive(self, "lr")
        _positive(self, "temperature")
        _positive(self, "weight_decay", allow_zero=True)
        if self.image_size is not None:
            _positive(self, "image_size")
        if self.lr_schedule not in ("per_group", "global"):
            raise ConfigError(f"lr_schedule={self.lr_schedule!r} is not a stage-1 schedule; choose per_group (a "
                              "cosine per group over its own epochs, as the authors) or global (one over all epochs)")


@dataclass
class Stage2Config(GroupsFields, ModelFields, ResumeFields, RunConfig):
    """ProGEO stage 2: train the image encoder with CosFace + the prompts' text features."""

    train_set: str = ""
    val_set: str = ""  # folder with database/ and a queries folder
    test_set: str | None = None  # test recalls of the best model at the end (None: skip)
    val_queries: str = "queries"
    test_queries: tuple[str, ...] = ("queries",)
    prompts: str | None = None  # stage-1 prompts file; required unless text_loss is False
    out_dir: str = "runs/stage2"
    # model
    fc_output_dim: int | None = None  # None: CLIP's embedding size (RN50 1024; ViT-B 512)
    image_size: int = 512
    freeze_cnn: int = 2
    freeze_trans: int = 6
    train_all_layers: bool = False
    # data and optimisation
    groups_num: int = 8  # progeo's first groups, or the first groups an imported prompts file names
    epochs: int = 64
    iterations_per_epoch: int = 10_000
    batch_size: int = 32  # global batch; split evenly over the processes under torchrun
    lr: float = 1e-5  # image encoder (Adam)
    classifiers_lr: float = 0.01  # CosFace classifiers (Adam, one per group)
    preload_images: bool | None = None  # keep the used groups' images decoded in memory (None: when small)
    preload_max_gib: float = 4.0
    # losses
    cosface_s: float = 30.0
    cosface_m: float = 0.4
    text_loss: bool = True  # False: plain CosPlace (no prompts needed)
    text_loss_weight: float = 1.0
    label_smoothing: float = 0.1
    triplet_weight: float = 0.0  # soft triplet loss weight (0: off)
    triplet_mining: str = "batch_hard"
    # augmentation (on the device, per image)
    brightness: float = 0.7
    contrast: float = 0.7
    saturation: float = 0.7
    hue: float = 0.5
    crop_scale: tuple[float, float] = (0.5, 1.0)
    normalization: str = "imagenet"  # "imagenet" (the paper) or "clip" (the backbone's own mean/std)
    # evaluation
    eval_batch_size: int = 64
    recall_values: tuple[int, ...] = (1, 5, 10, 20)
    positive_dist: float = 25.0

    def check(self) -> None:
        super().check()
        self.groups_config()
        for name in ("groups_num", "epochs", "iterations_per_epoch", "batch_size", "image_size", "eval_batch_size"):
            _positive(self, name)
        for name in ("lr", "classifiers_lr", "cosface_s"):
            _positive(self, name)
        for name in ("text_loss_weight", "triplet_weight", "cosface_m", "brightness",
                     "contrast", "saturation"):
            _positive(self, name, allow_zero=True)
        if not 0 <= self.hue <= 0.5:
            raise ConfigError(f"hue={self.hue} must lie in [0, 0.5] (torchvision's ColorJitter range)")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing={self.label_smoothing} must lie in [0, 1)")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ConfigError(f"crop_scale={self.crop_scale} must satisfy 0 < low <= high <= 1, e.g. 0.5 1.0")
        if self.normalization not in ("imagenet", "clip"):
            raise ConfigError(f"normalization={self.normalization!r}: choose 'imagenet' or 'clip'")
        if self.triplet_mining not in ("batch_hard", "all"):
            raise ConfigError(f"triplet_mining={self.triplet_mining!r}: choose 'batch_hard' or 'all'")
        if not 0 <= self.freeze_cnn <= 4:
            raise ConfigError(f"freeze_cnn={self.freeze_cnn} must be between 0 and 4")
        if self.freeze_trans < 0:
            raise ConfigError(f"freeze_trans={self.freeze_trans} must be >= 0")
        if not self.recall_values or min(self.recall_values) < 1:
            raise ConfigError(f"recall_values={self.recall_values} must be positive integers, e.g. 1 5 10 20")


# -- reading, merging, writing ---------------------------------------------------------------


def _positive(cfg, name: str, allow_zero: bool = False) -> None:
    value = getattr(cfg, name)
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name}={value} must be {bound}")


def config_fields(cls) -> dict[str, Any]:
    """``name -> type`` of a config dataclass (types resolved)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def read_config_file(path: str | Path) -> dict:
    """The mapping stored in a YAML (``.yaml``/``.yml``) or JSON file."""
    import yaml

    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path} ({exc.strerror or exc}); check the --config path") from exc
    with reading(path, "config file", "correct it or give another config file", ConfigError):
        text = raw.decode("utf-8-sig")
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of option: value, got a {type(data).__name__}")
    return data


def coerce_value(value: Any, tp: Any, name: str, where: str) -> Any:
    """Check/convert ``value`` to the annotated type ``tp`` (int, float, bool, str, tuples, Optional)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce_value(value, arg, name, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{name} in {where}: invalid value {value!r}")
    if origin in (tuple, list):
        args = typing.get_args(tp)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} in {where} must be a list, got {value!r}")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce_value(v, args[0], name, where) for v in value)
        if origin is tuple and args:
            if len(value) != len(args):
                raise ConfigError(f"{name} in {where} needs {len(args)} values, got {list(value)!r}")
            return tuple(coerce_value(v, a, name, where) for v, a in zip(value, args))
        return [coerce_value(v, args[0] if args else Any, name, where) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.strip().lower() in ("true", "yes", "1", "on")
        raise ConfigError(f"{name} in {where} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())
                                           or (isinstance(value, str) and value.strip().lstrip("-").isdigit())):
            raise ConfigError(f"{name} in {where} must be an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{name} in {where} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} in {where} must be a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list, tuple)) or value is None:
            raise ConfigError(f"{name} in {where} must be a string, got {value!r}")
        return str(value)
    return value


def config_from_dict(cls: type[C], data: Mapping[str, Any], where: str = "the configuration",
                     base: C | None = None) -> C:
    """A ``cls`` with the values of ``data`` over ``base`` (or the defaults); unknown keys are errors."""
    fields = config_fields(cls)
    values = dataclasses.asdict(base) if base is not None else {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in fields:
            import difflib

            close = difflib.get_close_matches(name, list(fields), n=3)
            hint = f"did you mean {', '.join(close)}?" if close else f"known keys: {', '.join(sorted(fields))}"
            raise ConfigError(f"unknown option {key!r} in {where}; {hint}")
        values[name] = coerce_value(value, fields[name], name, where)
    cfg = cls(**values)
    cfg.check()
    return cfg


def load_config(cls: type[C], path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> C:
    """Defaults, then the file ``path`` (YAML/JSON), then ``overrides`` (e.g. the command-line flags)."""
    cfg = cls()
    if path is not None:
        cfg = config_from_dict(cls, read_config_file(path), where=f"config file {path}")
    if overrides:
        cfg = config_from_dict(cls, overrides, where="the command line", base=cfg)
    else:
        cfg.check()
    return cfg


def config_to_dict(cfg) -> dict:
    """JSON-ready dict of a config (tuples as lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def save_config(cfg, path: str | Path) -> Path:
    """Write ``cfg`` as JSON (atomically); :func:`load_config` reads it back."""
    from progeo.io import write_json_atomic

    write_json_atomic(path, config_to_dict(cfg))
    return Path(path)


__all__ = ["RunConfig", "ResumeFields", "PretrainConfig", "Stage1Config", "Stage2Config", "load_config",
           "config_from_dict", "read_config_file", "save_config", "config_to_dict", "config_fields", "coerce_value"]
