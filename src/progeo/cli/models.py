"""``progeo import-checkpoint``, ``progeo import-prompts`` and ``progeo models``."""

from __future__ import annotations

import argparse

from progeo.cli.train import add_groups_flags, groups_from_args


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "import-checkpoint", help="convert a ProGEO/CosPlace state dict into a progeo model folder",
        description="Convert the authors' released ProGEO checkpoints (or any CosPlace-style state dict with "
                    "backbone.* and aggregation.* keys) into a progeo saved model (model.safetensors + config.json). "
                    "Files are read with torch.load(weights_only=True); pickles need --trust-pickle.")
    p.add_argument("src", help="checkpoint file (.pth/.pt/.safetensors)")
    p.add_argument("--backbone", required=True, help="architecture: RN50, RN101, ViT-B/16, ViT-B/32 (or any open_clip name)")
    p.add_argument("--out", required=True, help="output folder (or a .safetensors file for the single-file format)")
    p.add_argument("--fc-output-dim", type=int, default=None, help="descriptor size (default: from the tensors)")
    p.add_argument("--image-size", type=int, default=None,
                   help="input size in px (default: ViT: from the position embeddings; ResNet: 512, the authors' "
                        "training size)")
    p.add_argument("--test-resize", action="store_true",
                   help="ResNet: record that evaluation resizes test images to --image-size (progeo's default for its "
                        "own models); by default an imported ResNet is evaluated at the images' native size, as the "
                        "authors' eval.py does. ViTs always resize (their --resize_test_imgs)")
    p.add_argument("--normalization", choices=("imagenet", "clip"), default="imagenet",
                   help="mean/std recorded for inputs (default imagenet: the authors' training and test pipeline)")
    p.add_argument("--normalize", action="store_true", help="ViT: L2-normalize descriptors (the paper does not)")
    p.add_argument("--no-quick-gelu", action="store_true", help="the weights are not OpenAI CLIP's (use GELU)")
    p.add_argument("--trust-pickle", action="store_true", help="allow full unpickling (only for files you trust)")
    p.set_defaults(func=_import_checkpoint)

    p = subparsers.add_parser(
        "import-prompts", help="convert the authors' stage-1 prompt learners into a prompts file",
        description="Read the authors' pickled list of prompt learners (needs --trust-pickle) and keep only the "
                    "tensors (per-group class contexts, prefix and suffix embeddings) as a .safetensors prompts file. "
                    "The authors number groups and the classes inside a group otherwise than progeo; with --train-set "
                    "the rows are put on progeo's class labels (rebuilding the authors' order from the train set).")
    p.add_argument("src", help="prompt learner file (e.g. last_prompt_learners.pth)")
    p.add_argument("--out", required=True, help="output prompts file (.safetensors)")
    p.add_argument("--train-set", metavar="FOLDER", default=None,
                   help="the train folder the prompts were learned on (needed to remap the classes)")
    add_groups_flags(p)  # the partition of stage 1
    p.add_argument("--authors-python", choices=("3.8", "3.7"), default="3.8",
                   help="Python the prompts were learned under: 3.8 (3.8 or later, default) or 3.7; "
                        "the authors' class order depends on its tuple hash")
    p.add_argument("--keep-order", action="store_true",
                   help="copy the rows as they are (only for a file already in progeo's class order)")
    p.add_argument("--backbone", default="unknown",
                   help="backbone the prompts were learned with, recorded in the prompts file (default: %(default)s)")
    p.add_argument("--template", default=None, help='prompt template (default "A photo of a X X X X street.")')
    p.add_argument("--trust-pickle", action="store_true", help="allow full unpickling (only for files you trust)")
    p.set_defaults(func=_import_prompts)

    p = subparsers.add_parser("models", help="list backbone architectures and pretrained tags",
                              description="List the paper backbones, the tiny test architectures and, with --all, "
                                          "every open_clip architecture; with their pretrained tags and cache state.")
    p.add_argument("--all", action="store_true", help="list every open_clip architecture")
    p.set_defaults(func=_models)


def _import_checkpoint(args: argparse.Namespace) -> int:
    from progeo.models.importers import import_checkpoint

    report = import_checkpoint(args.src, args.backbone, args.out, fc_output_dim=args.fc_output_dim,
                               image_size=args.image_size, normalization=args.normalization, normalize=args.normalize,
                               quick_gelu=not args.no_quick_gelu, trust_pickle=args.trust_pickle,
                               test_resize=True if args.test_resize else None)
    dropped = ", ".join(f"{n} {what}" for what, n in report.dropped.items()) or "nothing"
    print(f"imported {report.tensors_loaded} tensors ({report.mapping}) as {report.arch} "
          f"[{report.head} head, {report.fc_output_dim}-d, {report.image_size[0]}x{report.image_size[1]} px, "
          f"tested at {'that size' if report.test_resize else 'native size'}] "
          f"-> {report.out}; ignored: {dropped}")
    for note in report.notes:
        print(f"note: {note}")
    return 0


def _import_prompts(args: argparse.Namespace) -> int:
    from progeo.models.importers import import_prompts
    from progeo.models.prompts import DEFAULT_TEMPLATE

    train_set = None
    if args.train_set and not args.keep_order:
        from progeo.data.train_sets import TrainSet

        train_set = TrainSet.open(args.train_set, groups_from_args(args))
    info = import_prompts(args.src, args.out, train_set=train_set, keep_order=args.keep_order,
                          authors_python=args.authors_python,
                          trust_pickle=args.trust_pickle, architecture=args.backbone,
                          template=args.template or DEFAULT_TEMPLATE)
    order = "rows kept as in the file" if args.keep_order else "classes remapped to progeo's order"
    print(f"imported {len(info.classes_per_group)} prompt group(s) (classes: {info.classes_per_group}, "
          f"{info.n_ctx} context vectors of width {info.width}; {order}) -> {args.out}")
    return 0


def _models(args: argparse.Namespace) -> int:
    import open_clip

    from progeo.models import registry
    from progeo.models.pretrained import cached_weights

    names = registry.list_architectures() if args.all else [*registry.PAPER_BACKBONES, *registry.TINY_ARCHITECTURES]
    print(f"{'architecture':<28} {'family':<7} {'embed':>5}  pretrained tags (* = cached)")
    for name in names:
        cfg = registry.architecture_config(name)
        tags = []
        for tag in open_clip.list_pretrained_tags_by_model(name):
            cached = cached_weights(open_clip.get_pretrained_cfg(name, tag)) is not None
            tags.append(tag + ("*" if cached else ""))
        print(f"{name:<28} {registry.vision_family(cfg):<7} {cfg.get('embed_dim', '?'):>5}  {', '.join(tags) or '-'}")
    return 0
