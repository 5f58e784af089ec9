"""Configuration of the training stages: dataclasses whose defaults are the paper's values.

Settings are grouped in sections (``model``, ``groups``: :class:`GroupsConfig`, ``optim``, ``loss``,
``augment``, ``eval``) that the
stages use whole. Every setting is a command-line flag (``--flat-name``) and a key of a YAML/JSON
config file (``--config FILE``), flat (``M``, ``eval_batch_size``) or inside its section (``groups:
{M: 20}``); :func:`progeo.config_files.flat_fields` is the one mapping of flat names onto fields,
and :mod:`progeo.config_files` reads, merges and writes config files. Each field's help text (what
it does, its unit, the paper's value) is in its metadata; ``field_help`` adds the default, and
``--help`` shows that.

- :class:`PretrainConfig`: contrastive image-text pretraining of a tiny CLIP (our demo's
  substitute for OpenAI's weights; not part of the paper).
- :class:`Stage1Config`: ProGEO stage 1, prompt learning (SPEC 1.4).
- :class:`Stage2Config`: ProGEO stage 2, image encoder training with the prompts (SPEC 1.5);
  ``text_loss=False`` is plain CosPlace on the same backbone.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass
from typing import Any, TypeVar

from progeo.errors import ConfigError

C = TypeVar("C")
_OUT_DIR = "run folder: config.json, logs, metrics, checkpoints and the trained model"


def _opt(default: Any, help: str, paper: bool = False, flat: str | None = None) -> Any:
    """A config field: its default, and in its metadata its help text (what it does, its unit),
    ``paper=True`` when the default is the paper's value (SPEC 1.2-1.5) and, for a field of a
    section, its ``flat`` name (flag and flat key) when that is not the field's own name."""
    return dataclasses.field(default=default, metadata={"help": help, "paper": paper, "flat": flat})


@dataclass
class RunConfig:
    """Fields every training command has."""

    out_dir: str = _opt("runs/run", _OUT_DIR)
    device: str = _opt("auto", "device to train on: cpu, cuda, cuda:N, mps, or auto (CUDA, then MPS, then CPU)")
    seed: int = _opt(0, "random seed of initialisation, sampling and augmentation; a run repeats with the same seed")
    amp: bool = _opt(True, "mixed precision where the device supports it (CUDA, MPS), as the paper trains; "
                           "float32 on CPU")
    num_workers: int = _opt(0, "image decoding processes of the data loader (0: decode in the main process)")
    progress: bool = _opt(True, "show tqdm progress bars")
    tensorboard: bool = _opt(True, "write TensorBoard event files beside the CSV logs in out_dir")
    threads: int | None = _opt(None, "torch CPU threads during the run (none: torch's default; 1 suits tiny models)")

    def check(self) -> None:
        _positive(self, "num_workers", zero=True)
        _positive(self, "threads")


@dataclass
class ResumeFields:
    """Checkpointing and resuming (:mod:`progeo.train.resume`); every training stage has them."""

    checkpoint_every: int = _opt(1000, "also save the resumable state every N training steps within an epoch "
                                       "(0: at the end of each epoch only)")
    resume: str | None = _opt(None, "run folder to continue from its last saved state (its config.json applies "
                                    "unless --config is given)")
    overwrite: bool = _opt(False, "start afresh in an out_dir that already holds a run (its logs and state are "
                                  "deleted)")
    stop_after: int | None = _opt(None, "for tests: stop, as if killed, after this many training steps of this "
                                        "process (none: train to the end)")

    def check(self) -> None:
        super().check()
        _positive(self, "checkpoint_every", zero=True)
        if self.stop_after is not None and self.stop_after < 1:
            raise ConfigError(f"stop_after={self.stop_after} must be >= 1 (or unset)")
        if self.resume and self.overwrite:
            raise ConfigError(f"resume={self.resume!r} and overwrite contradict each other: drop --overwrite to "
                              "continue the run, or drop --resume to start it again")


@dataclass(frozen=True)
class GroupsConfig:
    """CosPlace partition (SPEC 1.2): the ``groups`` section of stage 1 and stage 2."""

    M: int = _opt(10, "side of a class cell, in metres", paper=True)
    alpha: int = _opt(30, "width of a class's heading bin, in degrees", paper=True)
    N: int = _opt(5, "cells between two classes of one group along east and north, so they lie >= N*M metres "
                     "apart", paper=True)
    L: int = _opt(2, "heading bins between two classes of one group", paper=True)
    min_images_per_class: int = _opt(10, "classes with fewer images are dropped (CosPlace's value)")

    def __post_init__(self) -> None:
        for name, value in dataclasses.asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ConfigError(f"GroupsConfig.{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class AugmentSettings:
    """Stage 2's on-device augmentation (SPEC 1.5), the ``augment`` section; the
    :class:`~progeo.train.augment.AugmentConfig` of a run adds the output size and the mean/std."""

    brightness: float = _opt(0.7, "colour jitter: brightness factor drawn in [1 - b, 1 + b]", paper=True)
    contrast: float = _opt(0.7, "colour jitter: contrast factor drawn in [1 - c, 1 + c]", paper=True)
    saturation: float = _opt(0.7, "colour jitter: saturation factor drawn in [1 - s, 1 + s]", paper=True)
    hue: float = _opt(0.5, "colour jitter: hue shift drawn in [-h, h], in turns of the colour wheel, at most 0.5",
                      paper=True)
    crop_scale: tuple[float, float] = _opt((0.5, 1.0), "random resized crop: LOW HIGH bounds of the crop's area "
                                                       "as a fraction of the image", paper=True)

    def __post_init__(self) -> None:
        _positive(self, "brightness", "contrast", "saturation", zero=True)
        if not 0 <= self.hue <= 0.5:
            raise ConfigError(f"hue={self.hue} must lie in [0, 0.5] (torchvision's ColorJitter range)")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ConfigError(f"crop_scale={self.crop_scale} must satisfy 0 < low <= high <= 1, e.g. 0.5 1.0")


@dataclass(frozen=True)
class EvalSettings:
    """Stage 2's validation and test recalls, the ``eval`` section; :func:`eval_config` makes the
    :class:`progeo.eval.evaluate.EvalConfig` of a run from it."""

    batch_size: int = _opt(64, "images per batch when computing validation and test descriptors",
                           flat="eval_batch_size")
    recall_values: tuple[int, ...] = _opt((1, 5, 10, 20), "the N of the recall@N reported on val and test")
    positive_dist: float = _opt(25.0, "distance, in metres, within which a database image is a positive of a "
                                      "query", paper=True)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"eval_batch_size={self.batch_size} must be > 0")
        if not self.recall_values or min(self.recall_values) < 1:
            raise ConfigError(f"recall_values={self.recall_values} must be positive integers, e.g. 1 5 10 20")


@dataclass(frozen=True)
class PromptOptimSettings:
    """Stage 1's optimiser of the prompt learners, the ``optim`` section of :class:`Stage1Config`."""

    lr: float = _opt(0.01, "Adam learning rate of the prompt learners", paper=True)
    lr_schedule: str = _opt("per_group", "cosine annealing: per_group, one cosine per group over its own epochs "
                                         "(the authors'), or global, one over all epochs")
    weight_decay: float = _opt(0.0, "Adam weight decay of the prompt learners", paper=True)

    def __post_init__(self) -> None:
        _positive(self, "lr")
        _positive(self, "weight_decay", zero=True)
        if self.lr_schedule not in ("per_group", "global"):
            raise ConfigError(f"lr_schedule={self.lr_schedule!r} is not a stage-1 schedule; choose per_group (a "
                              "cosine per group over its own epochs, as the authors) or global (one over all epochs)")


@dataclass(frozen=True)
class OptimSettings:
    """Stage 2's optimisers, the ``optim`` section of :class:`Stage2Config`."""

    lr: float = _opt(1e-5, "Adam learning rate of the image encoder", paper=True)
    classifiers_lr: float = _opt(0.01, "Adam learning rate of each group's CosFace classifier", paper=True)

    def __post_init__(self) -> None:
        _positive(self, "lr", "classifiers_lr")


@dataclass(frozen=True)
class LossSettings:
    """Stage 2's losses (SPEC 1.5), the ``loss`` section of :class:`Stage2Config`."""

    cosface_s: float = _opt(30.0, "CosFace scale s multiplying the cosine logits", paper=True)
    cosface_m: float = _opt(0.4, "CosFace margin m subtracted from the true class's cosine", paper=True)
    text_loss: bool = _opt(True, "add ProGEO's image-to-text loss against the stage-1 prompts (--no-text-loss: "
                                 "plain CosPlace, no prompts needed)")
    text_loss_weight: float = _opt(1.0, "weight of the image-to-text loss added to the CosFace loss", paper=True)
    label_smoothing: float = _opt(0.1, "label smoothing epsilon of the image-to-text cross-entropy", paper=True)
    triplet_weight: float = _opt(0.0, "weight of an added soft triplet loss (0: off)", paper=True)
    triplet_mining: str = _opt("batch_hard", "triplets of the soft triplet loss: batch_hard (hardest positive "
                                             "and negative per anchor) or all")

    def __post_init__(self) -> None:
        _positive(self, "cosface_s")
        _positive(self, "text_loss_weight", "triplet_weight", "cosface_m", zero=True)
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing={self.label_smoothing} must lie in [0, 1)")
        if self.triplet_mining not in ("batch_hard", "all"):
            raise ConfigError(f"triplet_mining={self.triplet_mining!r}: choose 'batch_hard' or 'all'")


def eval_config(cfg, device, **changes):
    """The :class:`~progeo.eval.evaluate.EvalConfig` of run ``cfg``'s ``eval`` section on ``device``."""
    from progeo.eval.evaluate import EvalConfig

    return EvalConfig(**dataclasses.asdict(cfg.eval) | dict(num_workers=cfg.num_workers, device=str(device),
                                                            amp=cfg.amp, progress=cfg.progress, **changes))


@dataclass
class PretrainConfig(ResumeFields, RunConfig):
    """CLIP pretraining from scratch on a synthetic world's captions (``WORLD/captions.tsv``)."""

    world: str = _opt("", "synthetic world folder of `progeo synth` (captions.tsv, labels.csv, train/, val/, test/); "
                          "required")
    backbone: str = _opt("tiny-rn", "open_clip architecture trained from random initialisation (tiny-rn, tiny-vit, "
                                    "...)")
    out_dir: str = _opt("runs/pretrain", _OUT_DIR)
    image_size: int = _opt(64, "side of the square training images, in pixels")
    epochs: int = _opt(4, "passes over the captioned training images")
    batch_size: int = _opt(128, "image-caption pairs per step; the contrastive loss contrasts each image with "
                                "every caption of its batch")
    lr: float = _opt(3e-3, "peak AdamW learning rate, reached after warmup_steps, then cosine decay to 0")
    weight_decay: float = _opt(0.1, "AdamW weight decay of the weight matrices (not of gains, biases, embeddings "
                                    "and the logit scale)")
    warmup_steps: int = _opt(50, "steps of linear learning-rate warmup (at most a fifth of the run)")
    init_temperature: float = _opt(0.07, "initial temperature T of the contrastive loss: the learned logit scale "
                                         "starts at 1/T, capped at 100 (CLIP's initial value)")
    augment: bool = _opt(True, "random resized crop and colour jitter of the training images, on the device")
    max_images: int | None = _opt(None, "use at most this many captioned images (none: all)")
    eval_batch_size: int = _opt(256, "images per batch when measuring the zero-shot city accuracy")
    zeroshot_template: str = _opt("a street view photo taken in {city}, {country}.",
                                  "caption of each city for the zero-shot accuracy ({city}, {country} filled in)")

    def check(self) -> None:
        super().check()
        _positive(self, "image_size", "epochs", "batch_size", "eval_batch_size", "lr")
        _positive(self, "weight_decay", "warmup_steps", zero=True)
        if not 0 < self.init_temperature < 1:
            raise ConfigError(f"init_temperature={self.init_temperature} must lie in (0, 1), e.g. 0.07")
        if self.batch_size < 2:
            raise ConfigError("batch_size must be at least 2 for a contrastive loss")
        if "{city}" not in self.zeroshot_template:
            raise ConfigError(f"zeroshot_template {self.zeroshot_template!r} needs a {{city}} placeholder")


@dataclass(frozen=True)
class ModelConfig:
    """The CLIP backbone a stage starts from, the ``model`` section of stage 1 and stage 2."""

    backbone: str = _opt("RN50:openai", "CLIP to start from, ARCH[:TAG]: RN50:openai, ViT-B/16:openai, or tiny-vit "
                                        "/ tiny-rn with --weights", paper=True)
    weights: str | None = _opt(None, "local weights file instead of the open_clip download (e.g. "
                                     "RUN/clip.safetensors of progeo pretrain)")
    quick_gelu: bool | None = _opt(None, "QuickGELU activations, as OpenAI's CLIP weights need (none: what the "
                                         "weights say)")


@dataclass
class Stage1Config(ResumeFields, RunConfig):
    """ProGEO stage 1: learn one prompt learner per group on cached, frozen image features."""

    train_set: str = _opt("", "training folder of @-named images (CosPlace layout); required")
    out_dir: str = _opt("runs/stage1", _OUT_DIR)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    groups: GroupsConfig = dataclasses.field(default_factory=GroupsConfig)
    groups_cache_dir: str | None = _opt(None, "folder where the partition of the train set is cached "
                                              "(none: $PROGEO_CACHE_DIR or ~/.cache/progeo)")
    # The authors' README runs stage 1 with 1 group, but stage 2 trains 8 and needs prompts for every
    # group it trains, so their defaults do not chain. We default to stage 2's 8 groups; the 480 epochs
    # are spread over them (epoch e trains group e mod groups_num, 60 epochs per group).
    groups_num: int = _opt(8, "groups that get prompts, the partition's first ones (stage 2's 8; the authors' "
                              "README runs stage 1 with 1)")
    epochs: int = _opt(480, "epochs in total; epoch e trains the prompts of group e mod groups_num", paper=True)
    batch_size: int = _opt(512, "cached image features per step", paper=True)
    optim: PromptOptimSettings = dataclasses.field(default_factory=PromptOptimSettings)
    template: str = _opt("A photo of a X X X X street.", "prompt template; each X is a learned context token",
                         paper=True)
    temperature: float = _opt(1.0, "SupCon temperature tau (of raw features unless normalize_features)", paper=True)
    normalize_features: bool = _opt(False, "L2-normalise image and text features before SupCon, then lower "
                                           "temperature; the paper does not")
    image_size: int | None = _opt(None, "side of the images for feature extraction, in pixels (none: the "
                                        "backbone's native size, 224 for the paper's)")
    feature_cache_dir: str | None = _opt(None, "folder of the cached frozen image features (none: "
                                               "$PROGEO_CACHE_DIR/features or ~/.cache/progeo/features)")
    feature_batch_size: int = _opt(128, "images per batch when extracting the frozen image features")

    def check(self) -> None:
        super().check()
        _positive(self, "groups_num", "epochs", "batch_size", "feature_batch_size", "temperature", "image_size")


@dataclass
class Stage2Config(ResumeFields, RunConfig):
    """ProGEO stage 2: train the image encoder with CosFace + the prompts' text features."""

    train_set: str = _opt("", "training folder of @-named images (CosPlace layout); required")
    val_set: str = _opt("", "validation folder with database/ and a queries folder, evaluated after each epoch; "
                            "required")
    test_set: str | None = _opt(None, "test folder on which the best model's recalls are reported at the end "
                                      "(none: skip)")
    val_queries: str = _opt("queries", "query folder of val_set used for validation")
    test_queries: tuple[str, ...] = _opt(("queries",), "query folders of test_set to report")
    prompts: str | None = _opt(None, "prompts file of stage 1 (RUN/prompts.safetensors); required unless "
                                     "--no-text-loss")
    out_dir: str = _opt("runs/stage2", _OUT_DIR)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    groups: GroupsConfig = dataclasses.field(default_factory=GroupsConfig)
    groups_cache_dir: str | None = _opt(None, "folder where the partition of the train set is cached "
                                              "(none: $PROGEO_CACHE_DIR or ~/.cache/progeo)")
    augment: AugmentSettings = dataclasses.field(default_factory=AugmentSettings)
    eval: EvalSettings = dataclasses.field(default_factory=EvalSettings)
    # model
    fc_output_dim: int | None = _opt(None, "descriptor size (none: CLIP's embedding size, RN50 1024, ViT-B 512; "
                                           "another size only for ResNets)")
    image_size: int = _opt(512, "side of the square training images after the random resized crop, in pixels",
                           paper=True)
    freeze_cnn: int = _opt(2, "ResNet: frozen stages, the stem and layer1..layerN, 0-4", paper=True)
    freeze_trans: int = _opt(6, "ViT: frozen transformer blocks after the patch embedding and ln_pre", paper=True)
    train_all_layers: bool = _opt(False, "train every layer of the image encoder (overrides freeze_cnn and "
                                         "freeze_trans)")
    normalization: str = _opt("imagenet", "input mean/std: imagenet or clip (the backbone's own)", paper=True)
    # data and optimisation
    groups_num: int = _opt(8, "groups trained, epoch e on group e mod groups_num: the partition's first ones, or "
                              "the first an imported prompts file names", paper=True)
    epochs: int = _opt(64, "training epochs of iterations_per_epoch steps each, then validation", paper=True)
    iterations_per_epoch: int = _opt(10_000, "training steps per epoch", paper=True)
    batch_size: int = _opt(32, "images per step over all processes, split evenly under torchrun", paper=True)
    optim: OptimSettings = dataclasses.field(default_factory=OptimSettings)
    preload_images: bool | None = _opt(None, "keep the used groups' images decoded in memory (none: when they "
                                             "fit in preload_max_gib)")
    preload_max_gib: float = _opt(4.0, "memory, in GiB, that preloaded images may take when preload_images is "
                                       "none")
    loss: LossSettings = dataclasses.field(default_factory=LossSettings)

    def check(self) -> None:
        super().check()
        _positive(self, "groups_num", "epochs", "iterations_per_epoch", "batch_size", "image_size")
        if self.normalization not in ("imagenet", "clip"):
            raise ConfigError(f"normalization={self.normalization!r}: choose 'imagenet' or 'clip'")
        if not 0 <= self.freeze_cnn <= 4:
            raise ConfigError(f"freeze_cnn={self.freeze_cnn} must be between 0 and 4")
        if self.freeze_trans < 0:
            raise ConfigError(f"freeze_trans={self.freeze_trans} must be >= 0")


def _positive(cfg, *names: str, zero: bool = False) -> None:
    """ConfigError unless each field ``names`` of ``cfg`` is > 0 (>= 0 with ``zero``) or unset (None)."""
    for name in names:
        value = getattr(cfg, name)
        if value is not None and (value < 0 or (value == 0 and not zero)):
            raise ConfigError(f"{name}={value} must be {'>= 0' if zero else '> 0'}")


__all__ = ["RunConfig", "ResumeFields", "PretrainConfig", "Stage1Config", "Stage2Config", "ModelConfig",
           "GroupsConfig", "AugmentSettings", "EvalSettings", "PromptOptimSettings", "OptimSettings", "LossSettings",
           "eval_config"]
