"""``progeo pretrain``, ``progeo train stage1`` and ``progeo train stage2``.

Every field of the stage's config dataclass (:mod:`progeo.config`) is a flag (``--field-name``;
booleans also as ``--no-field-name``; ``none`` for optional values); ``--config FILE`` reads a
YAML/JSON file first and the flags given override it. ``--resume RUN`` (every stage) takes the
run's own ``config.json`` as the file when no ``--config`` is given, after checking that RUN is a
run of that stage (:mod:`progeo.train.resume`).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing

def _none_or(convert):
    def parse(text: str):
        return None if text.strip().lower() in ("none", "null") else convert(text)

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def add_config_flags(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """One flag per field of ``cls`` (default: not given, so the file/defaults apply)."""
    from progeo.config_files import config_fields, field_help

    for name, tp in config_fields(cls).items():
        if name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        text = field_help(cls, name).replace("%", "%%")  # argparse formats help with %
        args = typing.get_args(tp)
        optional = typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args
        base = next((a for a in args if a is not type(None)), tp) if optional else tp
        if base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=text)
        elif typing.get_origin(base) in (tuple, list):
            item = typing.get_args(base)[0]
            parser.add_argument(flag, nargs="+", type=item, default=argparse.SUPPRESS, metavar=name.upper(), help=text)
        else:
            conv = base if base in (int, float, str) else str
            parser.add_argument(flag, type=_none_or(conv) if optional else conv, default=argparse.SUPPRESS,
                                metavar=name.upper(), help=text)


def add_groups_flags(parser: argparse.ArgumentParser) -> None:
    """The CosPlace partition's flags (``--M --alpha --N --L --min-images-per-class``) of commands outside training."""
    from progeo.config import GroupsConfig

    add_config_flags(parser, GroupsConfig)
    parser.set_defaults(**dataclasses.asdict(GroupsConfig()))


def groups_from_args(args: argparse.Namespace):
    from progeo.config import GroupsConfig

    return GroupsConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(GroupsConfig)})


def config_from_args(cls, args: argparse.Namespace, config_file: str | None = None):
    """The config: defaults < ``--config`` file (or ``config_file``) < flags given."""
    from progeo.config_files import config_fields, load_config

    names = set(config_fields(cls))
    overrides = {k: v for k, v in vars(args).items() if k in names}
    return load_config(cls, args.config or config_file, overrides)


def _config_command(parent, name: str, cls, func, help: str, description: str) -> None:
    """A subcommand whose options are the fields of the dataclass config ``cls`` (plus ``--config``)."""
    p = parent.add_parser(name, help=help, description=description)
    p.add_argument("--config", help="YAML/JSON file of options (flags override it)")
    add_config_flags(p, cls)
    p.set_defaults(func=func)


def register(subparsers) -> None:
    from progeo.config import PretrainConfig, Stage1Config, Stage2Config

    _config_command(
        subparsers, "pretrain", PretrainConfig, _pretrain,
        help="pretrain a tiny CLIP from scratch on a synthetic world's captions",
        description="Contrastive image-text pretraining (CLIP loss, learned temperature) of a small open_clip "
                    "architecture on WORLD/captions.tsv; reports zero-shot city accuracy on the held-out images and "
                    "writes RUN/clip.safetensors for --backbone ARCH --weights FILE; resumable with --resume RUN.")
    train = subparsers.add_parser("train", help="ProGEO training: stage1 (prompts), stage2 (image encoder)",
                                  description="ProGEO's two training stages. Run under torchrun for several GPUs.")
    stages = train.add_subparsers(dest="stage", metavar="STAGE", required=True)
    _config_command(
        stages, "stage1", Stage1Config, _stage1,
        help="learn per-class prompts on cached frozen image features",
        description="Stage 1: frozen CLIP; image features of the used groups are cached on disk; one prompt learner "
                    "per group trained with SupCon image->text + text->image. Writes RUN/prompts.safetensors; "
                    "resumable with --resume RUN.")
    _config_command(
        stages, "stage2", Stage2Config, _stage2,
        help="train the image encoder with CosFace + the prompts' text features",
        description="Stage 2: per-group CosFace classifiers, label-smoothed image-to-text loss against the stage-1 "
                    "prompts (--no-text-loss: plain CosPlace), partial freezing, on-device augmentation, validation "
                    "each epoch, best/last models in RUN/, resumable with --resume RUN.")


def run_config(cls, args: argparse.Namespace, kind: str):
    """The config of a stage; with ``--resume RUN``, RUN's own config.json (checked to be a ``kind`` run)
    under the flags given, writing to RUN."""
    from progeo.train.resume import read_run_config

    resume = getattr(args, "resume", None)
    config_file = None
    if resume and not args.config:
        read_run_config(resume, kind)  # a clear error unless RUN is a run of this stage
        config_file = f"{resume}/config.json"
    cfg = config_from_args(cls, args, config_file)
    if resume:
        cfg = dataclasses.replace(cfg, out_dir=resume, resume=resume)
    return cfg


def _stopped_or_finished(r) -> bool:
    """Print the status of a run that stopped early or had finished before; True when it stopped early."""
    if r.stopped:
        print(f"stopped early (stop_after); continue with --resume {r.run_dir}")
        return True
    if r.already_finished:
        print(f"{r.run_dir} had already finished; nothing was trained or changed")
    return False


def _pretrain(args: argparse.Namespace) -> int:
    from progeo.config import PretrainConfig
    from progeo.train.pretrain import run_pretrain

    r = run_pretrain(run_config(PretrainConfig, args, "pretrain"))
    if _stopped_or_finished(r):
        return 0
    print(f"zero-shot city top-1: {r.zeroshot_before:.1f}% (random init) -> {r.zeroshot_accuracy:.1f}% "
          f"(chance {r.chance:.1f}%) in {r.seconds:.0f} s")
    print(f"checkpoint: {r.checkpoint}")
    return 0


def _stage1(args: argparse.Namespace) -> int:
    from progeo.config import Stage1Config
    from progeo.train.stage1 import run_stage1

    r = run_stage1(run_config(Stage1Config, args, "stage1"))
    if _stopped_or_finished(r):
        return 0
    first, last = (r.epoch_losses[0], r.epoch_losses[-1]) if r.epoch_losses else (float("nan"),) * 2
    print(f"stage 1: loss {first:.4f} -> {last:.4f} over {len(r.epoch_losses)} epochs in {r.seconds:.0f} s "
          f"(feature cache {'hit' if r.cache_hit else 'written'}: {r.feature_cache})")
    print(f"prompts: {r.prompts_path}")
    return 0


def _stage2(args: argparse.Namespace) -> int:
    from progeo.config import Stage2Config
    from progeo.eval.recall import RecallResult, format_recall_table
    from progeo.train.stage2 import run_stage2

    cfg = run_config(Stage2Config, args, "stage2")
    r = run_stage2(cfg)
    if _stopped_or_finished(r):
        return 0
    print(f"best val R@1 {r.best_val_r1:.2f} at epoch {r.best_epoch}; best model: {r.best_model}; last: {r.last_model}")
    if r.test_recalls:
        rows = [(name, RecallResult({int(k[2:]): v for k, v in d.items() if k.startswith("R@")}, d["queries_num"],
                                    d.get("queries_without_positives", 0))) for name, d in r.test_recalls.items()]
        print(format_recall_table(rows, title=f"test recalls of the best model ({cfg.test_set})"))
    return 0
