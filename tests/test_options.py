"""Options declared once: an option nobody knows is one line suggesting the closest known one
(run, inspect, train, --config keys), and inspect's colors follow --color/--no-color, then
NO_COLOR, then FORCE_COLOR, then the terminal."""

from __future__ import annotations

import argparse

import pytest

from sftprep.config import RUN_OPTIONS, build_config
from sftprep.options import closest
from sftprep.pipeline.run import main as run_main
from sftprep.views.inspect_cli import main as inspect_main
from sftprep.views.inspect_cli import use_color
from tests.conftest import DATA

SEED = str(DATA / "seed_examples.jsonl")


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.rstrip("\n")


@pytest.mark.parametrize("args, line", [
    (["--max-lenght", "16"], "unknown option '--max-lenght': neither sftprep nor Beam knows it; "
                             "did you mean --max-length?"),
    (["--max_lenght=16"], "unknown option '--max_lenght=16': neither sftprep nor Beam knows it; "
                          "did you mean --max-length?"),
    (["--runer", "DataflowRunner"], "unknown option '--runer': neither sftprep nor Beam knows "
                                    "it; did you mean --runner?"),
    (["--direct_num_worker", "2"], "unknown option '--direct_num_worker': neither sftprep nor "
                                   "Beam knows it; did you mean --direct_num_workers?"),
    (["--zzzz", "1"], "unknown option '--zzzz': neither sftprep nor Beam knows it (sftprep run "
                      "--help lists sftprep's)"),
    (["--pubish"], "unknown option '--pubish': neither sftprep nor Beam knows it; did you mean "
                   "--publish?"),
])
def test_an_unknown_run_option_stops_the_launch_in_one_line(tmp_path, capsys, args, line):
    out = tmp_path / "out"
    assert run_main(["--input", SEED, "--output", str(out), *args]) == 2
    assert one_line(capsys) == f"sftprep: error: {line}"
    assert not out.exists()  # refused before anything is written


def test_a_mistyped_choice_suggests_the_closest(tmp_path, capsys):
    assert run_main(["--input", SEED, "--output", str(tmp_path / "out"), "--truncation",
                     "keep_complete"]) == 2
    assert one_line(capsys) == ("sftprep: error: --truncation must be one of keep_completion, "
                                "drop_oldest_turns, truncate_right, drop; did you mean "
                                "keep_completion?")
    assert not (tmp_path / "out").exists()


def test_an_unknown_config_key_suggests_the_closest(tmp_path, capsys):
    path = tmp_path / "sftprep.yaml"
    path.write_text(f"input: {SEED}\noutput: {tmp_path / 'out'}\nmax_lenght: 16\n")
    assert run_main(["--config", str(path)]) == 2
    assert one_line(capsys) == ("sftprep: error: --config: unknown option 'max_lenght'; did you "
                                "mean max_length?")
    path.write_text(f"input: {SEED}\noutput: {tmp_path / 'out'}\nbeam_arg: [--runner=x]\n")
    assert run_main(["--config", str(path)]) == 2
    assert one_line(capsys) == ("sftprep: error: --config: unknown option 'beam_arg'; did you "
                                "mean beam_args?")
    assert not (tmp_path / "out").exists()


def test_inspect_refuses_unknown_options_and_takes_those_of_run(capsys):
    assert inspect_main(["--input", SEED, "--max-lenght", "16"]) == 2
    assert one_line(capsys) == ("sftprep inspect: error: unknown option '--max-lenght'; did you "
                                "mean --max-length? (inspect takes the options of sftprep run, "
                                "not Beam's, and its own: sftprep inspect --help lists them)")
    assert inspect_main(["--input", SEED, "--runner", "DataflowRunner"]) == 2
    assert one_line(capsys).startswith("sftprep inspect: error: unknown option '--runner' (")
    assert inspect_main(["--input", SEED, "--colour"]) == 2
    assert "did you mean --color?" in one_line(capsys)
    # Options of run that inspect has no use for are taken, as a run command line is.
    assert inspect_main(["--input", SEED, "--output", "unused", "--publish", "--num-shards", "3",
                         "--max-length", "32", "--n", "1", "--no-color"]) == 0
    assert "tokens=" in capsys.readouterr().out
    assert inspect_main(["--input", SEED, "--color", "--no-color"]) == 2
    assert one_line(capsys) == "sftprep inspect: error: --color and --no-color exclude each other"


def test_train_refuses_unknown_options_in_one_line(tmp_path, capsys):
    from sftprep.cli import main

    assert main(["train", "--data", str(tmp_path), "--output", str(tmp_path / "c"),
                 "--max-step", "3"]) == 2
    assert one_line(capsys) == ("sftprep: error: unknown option '--max-step'; did you mean "
                                "--max-steps? (sftprep train --help lists the options)")
    assert main(["train", "--data", str(tmp_path), "--output", str(tmp_path / "c"),
                 "--seq-len", "1"]) == 2
    assert one_line(capsys) == ("sftprep: error: --seq-len must be at least 2 (the loss "
                                "predicts the next token)")
    assert not (tmp_path / "c").exists()


def test_closest_ignores_dashes_and_underscores_and_stays_silent_when_nothing_is_close():
    assert closest("--max_lenght", ["--max-length", "--seed"]) == "--max-length"
    assert closest("--trian-on=all", ["--train-on", "--truncation"]) == "--train-on"
    assert closest("--zzzz", ["--max-length", "--seed"]) is None


def test_every_option_is_accepted_with_underscores_and_bools_take_a_value():
    from sftprep.pipeline.run import make_parser

    parser = make_parser()
    for opt in RUN_OPTIONS:
        flag = "--" + opt.cli_flag[2:].replace("-", "_")
        value = [] if opt.type is bool else ["x" if opt.type in (str, list) else "1"]
        args, rest = parser.parse_known_args(["--input", "a", "--output", "o", flag, *value])
        assert rest == [] and getattr(args, opt.name) is not None, opt.name
    args = parser.parse_args(["--input", "a", "--output", "o", "--publish=false",
                              "--skip-if-unchanged"])
    config = build_config(args)
    assert config.publish is False and config.skip_if_unchanged is True


def _args(color=None, no_color=None):
    return argparse.Namespace(color=color, no_color=no_color)


class _Stdout:
    def __init__(self, tty):
        self.tty = tty

    def isatty(self):
        return self.tty


@pytest.mark.parametrize("flags, environ, tty, expected", [
    ({}, {}, True, True),
    ({}, {}, False, False),
    ({}, {"NO_COLOR": "1"}, True, False),
    ({}, {"NO_COLOR": ""}, True, True),  # empty: as if unset
    ({}, {"FORCE_COLOR": "1"}, False, True),
    ({}, {"FORCE_COLOR": ""}, False, False),
    ({}, {"NO_COLOR": "1", "FORCE_COLOR": "1"}, False, False),  # NO_COLOR wins, as in CPython
    ({"color": True}, {"NO_COLOR": "1"}, False, True),  # the flags win
    ({"no_color": True}, {"FORCE_COLOR": "1"}, True, False),
    ({"color": False}, {}, True, False),  # --color=false
    ({"no_color": False}, {}, False, True),  # --no-color=false
])
def test_use_color(monkeypatch, flags, environ, tty, expected):
    monkeypatch.setattr("sys.stdout", _Stdout(tty))
    assert use_color(_args(**flags), environ) is expected


def test_inspect_colors_follow_the_environment(monkeypatch, capsys):
    args = ["--input", SEED, "--index", "0"]
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert inspect_main(args) == 0
    assert "\x1b[" in capsys.readouterr().out  # stdout is captured, not a terminal
    monkeypatch.setenv("NO_COLOR", "1")
    assert inspect_main(args) == 0
    plain = capsys.readouterr().out
    assert "\x1b[" not in plain and "⟦" in plain
    assert inspect_main(args + ["--color"]) == 0
    assert "\x1b[" in capsys.readouterr().out


def test_the_manifest_config_keeps_its_keys_and_values():
    """RunConfig.to_dict() (the manifest's `config`, a valid --config) is flat, as before the
    example settings were nested: the same keys, and the defaults the options declare."""
    from sftprep.pipeline.run import load_config

    config, _ = load_config(["--input", "a.jsonl", "--output", "o", "--map", "prompt=q",
                             "--template-kwargs", "enable_thinking=false", "--stop-tokens", "<s>"])
    assert config.to_dict() == {
        "inputs": ["a.jsonl"], "output": "o", "format": None, "field_map": ["prompt=q"],
        "tokenizer": "deepseek-v4", "template": "markers", "train_on": "all_assistant",
        "max_length": 4096, "truncation": "keep_completion", "min_trainable_tokens": 1,
        "validation_fraction": 0.0, "num_shards": 0, "seed": 0, "max_rejected_fraction": 0.1,
        "max_record_bytes": 8 * 1024 * 1024, "batch_size": 1024, "range_bytes": 0,
        "publish": False, "keep_runs": 0, "skip_if_unchanged": False, "progress": "auto",
        "local_processes": 0, "local_engine": "auto",
        "max_messages": 10_000, "reasoning": "keep", "crossing_tokens": "train",
        "template_kwargs": {"enable_thinking": False},
        "template_date": "2026-01-01", "stop_tokens": ["<s>"], "rewritten_turns": "last",
        "pack_length": 0, "mixture": None}
    # Read back as a --config file, it gives the same config.
    again = build_config(argparse.Namespace(), config.to_dict())
    assert again == config
