"""The one config loader of sweeps and studies: declared fields, defaults → file → overrides, one-line errors naming
file:line, and command-line flags generated from the declarations."""

from __future__ import annotations

import argparse

import pytest

from ladle.cli.main import build_parser, main
from ladle.cli.common import add_flags, overrides_from
from ladle.config import BRANCH_POINTS_FIELDS, SELF_SOUP_FIELDS, SWEEP_FIELDS, Field, check_value
from ladle.errors import LadleError
from ladle.studies.branch_points import load_branch_config
from ladle.studies.self_soup import load_self_soup_config
from ladle.training.config import load_config


def subparser(*path: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in path:
        parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
    return parser


@pytest.mark.parametrize("path, fields", [(("train", "sweep"), SWEEP_FIELDS),
                                          (("study", "branch-points"), BRANCH_POINTS_FIELDS),
                                          (("study", "self-soup"), SELF_SOUP_FIELDS)])
def test_every_plain_field_is_a_flag_and_the_rest_are_set(path, fields):
    flags = {o for a in subparser(*path)._actions for o in a.option_strings}
    assert {f.flag for f in fields if f.type is not object} <= flags and "--set" in flags
    assert not {f.flag for f in fields if f.type is object} & flags  # lists of mappings and the like: --set only


def test_flags_say_their_bounds():
    text = " ".join(subparser("study", "self-soup").format_help().split())  # unwrapped
    assert "[> 0, < 1]" in text and "[≥ 1, ≤ 5]" in text  # pool_fraction, severity


@pytest.mark.parametrize("load, fields", [(load_config, SWEEP_FIELDS), (load_branch_config, BRANCH_POINTS_FIELDS),
                                          (load_self_soup_config, SELF_SOUP_FIELDS)])
def test_defaults_then_file_then_overrides(tmp_path, load, fields):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 3\nthreads: 2\n")
    assert getattr(load(None), "seed") == 0
    cfg = load(path, {"threads": 4, "seed": None})
    assert (cfg.seed, cfg.threads) == (3, 4)  # the file over the defaults, an override over the file; None: nothing
    path.write_text("seed: 1\n\nthreads: 0\n")
    with pytest.raises(LadleError) as err:
        load(path)
    assert str(err.value) == f"{path}:3: field 'threads': must be ≥ 1, got 0"
    path.write_text("seed: 1\nthreadz: 2\n")
    with pytest.raises(LadleError, match=rf"^{path}:2: field 'threadz': unknown field \(known fields: model, "):
        load(path)


def test_a_relative_folder_is_relative_to_the_config_file(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "c.yaml").write_text("data: data\n")
    assert load_self_soup_config(tmp_path / "c.yaml").data == str(tmp_path / "data")
    assert load_branch_config(tmp_path / "c.yaml").data == str(tmp_path / "data")


def test_bounds():
    share = Field("share", float, None, "a share", low=0, high=1, above=True, below=True)
    assert check_value(share, 0.5, {}) == 0.5
    for bad, says in [(0, "must be > 0, got 0.0"), (1, "must be < 1, got 1.0"), ("x", "must be a number, got 'x'")]:
        with pytest.raises(LadleError, match=f"^config: field 'share': {says}$"):
            check_value(share, bad, {"other": "f.yaml:1"})
    count = Field("count", int, None, "a count", low=1, high=5, nullable=True)
    assert check_value(count, None, {}) is None and check_value(count, 5, {}) == 5
    with pytest.raises(LadleError, match="must be ≤ 5, got 6"):
        check_value(count, 6, {"count": "f.yaml:2"})


def test_flags_then_set_make_the_overrides():
    parser = argparse.ArgumentParser()
    add_flags(parser, SWEEP_FIELDS)
    args = parser.parse_args(["--lr", "1e-3", "--epochs", "2", "--set", "lr=[1e-4, 2e-4]", "--set", "temperature=0.1"])
    overrides = overrides_from(args, SWEEP_FIELDS)
    assert overrides == {"lr": ["1e-4", "2e-4"], "epochs": 2, "temperature": 0.1}  # --set wins; YAML's 1e-4 is text
    cfg = load_config(None, overrides | {"objective": "mocov3"})
    assert cfg.space["lr"] == (1e-4, 2e-4) and cfg.space["temperature"] == (0.1,)  # ... read as the number it is
    with pytest.raises(LadleError, match="^--set: expected FIELD=VALUE, got 'lr'$"):
        overrides_from(parser.parse_args(["--set", "lr"]), SWEEP_FIELDS)


@pytest.mark.parametrize("argv, message", [
    (["train", "sweep", "--config", "{cfg}", "--out", "{out}"], "{cfg}:2: field 'lr': must be > 0, got 0.0"),
    (["train", "sweep", "--epochs", "0", "--out", "{out}"], "overrides: field 'epochs': must be ≥ 1, got 0"),
    (["study", "branch-points", "--config", "{cfg}", "--out", "{out}"], "{cfg}:2: field 'lr': must be > 0, got 0.0"),
    (["study", "branch-points", "--set", "variants=[[1, 2]]", "--out", "{out}"], "overrides: field 'variants': item 1"),
    (["study", "self-soup", "--config", "{cfg}", "--out", "{out}"], "{cfg}:2: field 'lr': unknown field"),
    (["study", "self-soup", "--severity", "7", "--out", "{out}"], "overrides: field 'severity': must be ≤ 5, got 7"),
])
def test_a_bad_field_is_one_line_exit_2_before_any_work(tmp_path, capsys, argv, message):
    cfg, out = tmp_path / "bad.yaml", tmp_path / "out"
    cfg.write_text("seed: 0\nlr: 0\n")
    code = main([a.format(cfg=cfg, out=out) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("ladle: error: " + message.format(cfg=cfg)) and err.count("\n") == 1
    assert not out.exists()
