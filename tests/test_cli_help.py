"""Every option of every ``progeo`` subcommand says what it does, and shows its default.

The training commands' flags take their help from the config fields' metadata
(:func:`progeo.config.field_help`), not from the source code, so the help survives an
installation without sources.
"""

from __future__ import annotations

import argparse
import inspect
import re

import pytest

from progeo.cli import build_parser
from progeo.config import PretrainConfig, Stage1Config, Stage2Config
from progeo.config_files import config_fields, field_help

STOP = {"a", "an", "the", "of", "in", "on", "to", "for", "and", "or", "is", "by", "with", "its", "it", "this"}


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield " ".join(path), parser
    for action in subs:
        for name, sub in action.choices.items():
            yield from _leaves(sub, path + (name,))


def _options():
    for command, parser in _leaves(build_parser()):
        for action in parser._actions:
            if not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                yield command, parser, action


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    return parser._get_formatter()._expand_help(action) if action.help else ""


def test_every_option_has_a_help_that_is_more_than_its_name():
    weak = []
    for command, parser, action in _options():
        text = _help(parser, action)
        name = " ".join(action.option_strings) or action.dest
        said = _words(re.sub(r"\(default:[^)]*\)", "", text)) - _words(f"{name} {action.dest}") - STOP
        if len(said) < 2:
            weak.append(f"progeo {command} {name}: {text!r}")
    assert not weak, "options whose help is missing or only repeats their name:\n" + "\n".join(weak)


def test_options_with_a_default_show_it():
    hidden = []
    for command, parser, action in _options():
        if action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction):
            continue  # a store_true/store_false switch: its default is its absence
        if action.default is argparse.SUPPRESS:  # a config flag (its default is the config's) must show it
            if "--config" not in parser._option_string_actions:
                continue
        elif action.default is None or action.default == []:
            continue  # nothing to show: an unset optional value
        if "default" not in _help(parser, action):
            hidden.append(f"progeo {command} {' '.join(action.option_strings)} (default {action.default!r})")
    assert not hidden, "options that do not show their default:\n" + "\n".join(hidden)


@pytest.mark.parametrize("cls", [PretrainConfig, Stage1Config, Stage2Config])
def test_config_flags_show_the_fields_default(cls):
    command = {PretrainConfig: "pretrain", Stage1Config: "train stage1", Stage2Config: "train stage2"}[cls]
    parser = dict(_leaves(build_parser()))[command]
    for name in config_fields(cls):  # a section's fields too, under their flat name (--M, --eval-batch-size)
        action = parser._option_string_actions["--" + name.replace("_", "-")]
        assert _help(parser, action) == field_help(cls, name)
        assert "(default: " in field_help(cls, name)


def test_field_help_names_the_paper_value_and_survives_a_subclass_default():
    assert field_help(Stage2Config, "cosface_s").endswith("(default: 30.0, the paper's value)")
    assert field_help(Stage2Config, "test_queries").endswith("(default: queries)")
    assert field_help(Stage1Config, "template").endswith("(default: 'A photo of a X X X X street.', the paper's value)")
    assert field_help(PretrainConfig, "out_dir").startswith("run folder") and "runs/pretrain" in field_help(
        PretrainConfig, "out_dir")


def test_help_comes_from_field_metadata_not_from_the_source(monkeypatch):
    def no_source(obj):
        raise OSError("no source available")

    monkeypatch.setattr(inspect, "getsource", no_source)
    parser = dict(_leaves(build_parser()))["train stage2"]
    text = _help(parser, parser._option_string_actions["--cosface-s"])
    assert "scale" in text and "(default: 30.0" in text
    assert "metres" in _help(parser, parser._option_string_actions["--positive-dist"])
