"""Reading tensors from model files, and explaining how two sets of tensors differ.

Formats read: safetensors; ``torch.save`` state dicts (with ``weights_only=True``, the only
safe way); TorchScript archives such as OpenAI's released ``RN50.pt``; and, only when the caller
passes ``trust_pickle=True``, arbitrary pickles (e.g. the ProGEO authors' pickled prompt
learners), whose unknown classes are rebuilt as plain containers so that their tensors can be
read without the authors' code.
"""

from __future__ import annotations

import io
import logging
import pickle
import types
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from progeo.errors import CheckpointError, reading, short_reason, unreadable

log = logging.getLogger(__name__)

#: Wrapper keys under which training scripts nest the weights.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
#: Non-tensor entries of TorchScript CLIP archives and buffers rebuilt at construction.
CLIP_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask")


def is_torchscript_archive(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def load_file(path: str | Path, *, trust_pickle: bool = False, what: str = "checkpoint"):
    """Load a model file as Python objects: a dict of tensors for the safe formats.

    TorchScript archives give their ``state_dict()``. A file that needs general unpickling is
    refused with a CheckpointError unless ``trust_pickle`` is set.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} file {path} does not exist; check the path")
    fix = "download or export it again"
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file as st_load

        with reading(path, what, fix, CheckpointError):
            return st_load(str(path), device="cpu")
    if is_torchscript_archive(path):
        try:
            return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
        except Exception as exc:
            raise CheckpointError(f"{what} {path} looks like a TorchScript archive but cannot be loaded: {exc}") from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "global" not in str(exc).lower():  # not Python objects refused, but bytes that are no pickle
            raise unreadable(path, what, "not a PyTorch file or pickle", fix, CheckpointError) from exc
        if not trust_pickle:
            raise CheckpointError(
                f"{what} {path} is a pickle that holds Python objects, not only tensors; loading it can run "
                f"arbitrary code. If you trust its origin, pass --trust-pickle (Python: trust_pickle=True)"
            ) from exc
    except Exception as exc:
        raise unreadable(path, what, short_reason(exc), fix, CheckpointError) from exc
    log.warning("loading %s with full unpickling (--trust-pickle)", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_LenientPickle)
    except Exception as exc:
        raise CheckpointError(f"{what} {path} could not be unpickled even with --trust-pickle: "
                              f"{short_reason(exc)}") from exc


def to_state_dict(obj, *, path: str | Path = "?", what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Unwrap a loaded object into a flat ``name -> tensor`` dict (no DDP ``module.`` prefix)."""
    for _ in range(3):
        if isinstance(obj, torch.nn.Module):
            obj = obj.state_dict()
        if isinstance(obj, Mapping):
            nested = [k for k in WRAPPER_KEYS if isinstance(obj.get(k), (Mapping, torch.nn.Module))]
            if nested and not any(isinstance(v, torch.Tensor) for v in obj.values()):
                obj = obj[nested[0]]
                continue
        break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{what} {path} holds a {type(obj).__name__}, not a state dict of tensors")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{what} {path} contains no tensors (keys: {', '.join(map(str, list(obj)[:5]))})")
    return strip_prefix(tensors, "module.")


def read_state_dict(path: str | Path, *, trust_pickle: bool = False, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    return to_state_dict(load_file(path, trust_pickle=trust_pickle, what=what), path=path, what=what)


def strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Remove ``prefix`` from keys when every key carries it (e.g. DDP's ``module.``)."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def fill_bn_counters(expected: Mapping[str, torch.Tensor], got: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add the batch-norm ``num_batches_tracked`` counters some exporters leave out (eval ignores them)."""
    for key, value in expected.items():
        if key.endswith("num_batches_tracked") and key not in got:
            got[key] = torch.zeros_like(value)
    return got


def describe_mismatch(
    expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor], limit: int = 5
) -> list[str]:
    """Human-readable differences between two state dicts (empty list when they match)."""

    def shape(t: torch.Tensor) -> str:
        return "x".join(map(str, t.shape)) or "scalar"

    def few(keys: list[str], table: Mapping[str, torch.Tensor]) -> str:
        stats = ("num_batches_tracked", "running_mean", "running_var")
        keys = sorted(keys, key=lambda k: k.endswith(stats))  # weights first: they tell more (stable sort)
        shown = ", ".join(f"{k} [{shape(table[k])}]" for k in keys[:limit])
        return shown + (f" ... (+{len(keys) - limit} more)" if len(keys) > limit else "")

    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    wrong = [k for k in expected if k in got and tuple(expected[k].shape) != tuple(got[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {few(missing, expected)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {few(unexpected, got)}")
    if wrong:
        shown = ", ".join(f"{k} (file {shape(got[k])}, model {shape(expected[k])})" for k in wrong[:limit])
        more = f" ... (+{len(wrong) - limit} more)" if len(wrong) > limit else ""
        problems.append(f"{len(wrong)} shape mismatch(es): {shown}{more}")
    return problems


def check_state_dict(expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor], context: str) -> None:
    """Raise CheckpointError naming the differing keys and shapes, if any."""
    problems = describe_mismatch(expected, got)
    if problems:
        raise CheckpointError(f"{context} does not match the model: " + "; ".join(problems))


# -- trusted unpickling of files saved with classes we do not have -------------------------------


class PickledObject(torch.nn.Module):
    """Stands in for a class of a foreign code base while unpickling (``--trust-pickle`` only).

    Pickled ``nn.Module`` objects restore their ``__dict__`` (parameters, buffers, children), so
    ``named_parameters()``/``named_buffers()``/``state_dict()`` work on the stand-in.
    """

    foreign_class = "?"

    def __setstate__(self, state):
        if isinstance(state, dict):
            for name in ("_parameters", "_buffers", "_modules"):
                state.setdefault(name, {})
            self.__dict__.update(state)
        else:  # pragma: no cover - exotic reducers
            self.__dict__["_foreign_state"] = state

    def forward(self, *args, **kwargs):  # pragma: no cover
        raise RuntimeError(f"{self.foreign_class} was loaded as data only")


class _LenientUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            log.debug("unpickling %s.%s as a data-only stand-in", module, name)
            return type(name, (PickledObject,), {"foreign_class": f"{module}.{name}"})


_LenientPickle = types.SimpleNamespace(
    Unpickler=_LenientUnpickler,
    load=lambda f, **kw: _LenientUnpickler(f, **kw).load(),
    loads=lambda b, **kw: _LenientUnpickler(io.BytesIO(b), **kw).load(),
    __name__="progeo_lenient_pickle",
)
