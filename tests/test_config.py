"""The --config file: value types checked in one place, `map` as a mapping, Beam options in the
file with the command line taking precedence, and a manifest's recorded Beam arguments."""

from __future__ import annotations

import json

import pytest

from sftprep.config import merge_beam_args
from sftprep.pipeline.beam_job import pipeline_runner
from sftprep.pipeline.run import load_config, main
from tests.conftest import DATA


def config_file(tmp_path, text):
    path = tmp_path / "sftprep.yaml"
    path.write_text(f"input: [{DATA / 'seed_examples.jsonl'}]\noutput: {tmp_path / 'out'}\n"
                    + text)
    return str(path)


@pytest.mark.parametrize("text,message", [
    ('max-length: "2048"', "--config: max-length must be an integer, got '2048' (a string); "
                           "write it without quotes"),
    ("max_length: 2048.5", "--config: max_length must be an integer, got 2048.5 (a number)"),
    ("seed: true", "--config: seed must be an integer, got True (a boolean)"),
    ("validation-fraction: [0.1]", "--config: validation-fraction must be a number, got [0.1] "
                                   "(a list)"),
    ('publish: "yes"', "--config: publish must be true or false, got 'yes' (a string); write it "
                       "without quotes"),
    ("template: 7", "--config: template must be a string, got 7 (an integer)"),
    ("input: {a: b}", "--config: input must be a string or a list of strings, got {'a': 'b'} "
                      "(a mapping)"),
    ("map: 5", "--config: map must be a mapping of NEW: OLD or a list of NEW=OLD strings, got 5 "
               "(an integer)"),
    ("map: [prompt]", "--map expects NEW=OLD, got 'prompt'"),
    ("map: {prompt: 5}", "--config: map entries must be NEW=OLD or NEW: OLD with string names, "
                         "got {'prompt': 5}"),
    ("beam_args: --runner=DataflowRunner", '--config: beam_args must be a list of strings such '
                                           'as ["--runner=DataflowRunner"], got '
                                           "'--runner=DataflowRunner' (a string)"),
    ("beam: [--runner=DataflowRunner]", "--config: beam must be a mapping of Beam option: value"),
    ("beam: {runner: DataflowRunner}\nbeam_args: [--region=x]", "not both"),
    ("beam: {use_public_ips: false}", "--config: beam.use_public_ips: false is not passed to "
                                      "Beam; leave the option out"),
    ("beam_args: [--max-length=10]", "--config: beam_args holds sftprep's own option "
                                     "--max-length; write it as a top-level key"),
    ("beam: {format: bad}", "--config: beam holds sftprep's own option --format; write it as a "
                            "top-level key"),
])
def test_wrong_types_are_one_clear_line(tmp_path, capsys, text, message):
    assert main(["--config", config_file(tmp_path, text)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sftprep: error: ") and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_values_of_the_right_type_are_taken(tmp_path):
    config, _ = load_config(["--config", config_file(
        tmp_path, "max-length: 300\nvalidation-fraction: 0\npublish: false\nformat:\n"
                  "map: {prompt: question, completion: answer}\n")])
    assert config.example.max_length == 300 and config.example.validation_fraction == 0.0
    assert isinstance(config.example.validation_fraction, float) and config.publish is False
    assert config.example.format is None  # `format:` with no value keeps the default
    assert config.example.field_map == (("prompt", "question"), ("completion", "answer"))
    listed, _ = load_config(["--config", config_file(
        tmp_path, "map: [prompt=question, {completion: answer}]\n")])
    assert listed.example.field_map == config.example.field_map
    single, _ = load_config(["--config", config_file(tmp_path, "map: prompt=question\n")])
    assert single.example.field_map == (("prompt", "question"),)


def test_beam_args_in_the_file_and_the_command_line_wins(tmp_path):
    path = config_file(tmp_path, "beam_args: [--runner=DataflowRunner, --project, file-project, "
                                 "--region=europe-west4, --experiments=a, --experiments=b]\n")
    _, beam_args = load_config(["--config", path])
    assert beam_args == ["--runner=DataflowRunner", "--project", "file-project",
                         "--region=europe-west4", "--experiments=a", "--experiments=b"]
    _, beam_args = load_config(["--config", path, "--project=cli-project", "--experiments", "c",
                                "--temp_location=gs://b/tmp"])
    assert beam_args == ["--runner=DataflowRunner", "--region=europe-west4",
                         "--project=cli-project", "--experiments", "c",
                         "--temp_location=gs://b/tmp"]


def test_beam_mapping_in_the_file(tmp_path):
    path = config_file(tmp_path, "beam:\n  runner: DataflowRunner\n  project: p\n"
                                 "  max-num-workers: 8\n  experiments: [a, b]\n"
                                 "  save_main_session: true\n")
    _, beam_args = load_config(["--config", path])
    assert beam_args == ["--runner=DataflowRunner", "--project=p", "--max_num_workers=8",
                         "--experiments=a", "--experiments=b", "--save_main_session"]
    _, beam_args = load_config(["--config", path, "--runner", "DirectRunner",
                                "--max_num_workers=2"])
    assert beam_args == ["--project=p", "--experiments=a", "--experiments=b",
                         "--save_main_session", "--runner", "DirectRunner", "--max_num_workers=2"]


def test_merge_beam_args_keeps_values_with_their_option():
    assert merge_beam_args(["--a", "1", "--b=2", "--flag", "--c", "-5"], ["--c=6", "--b", "3"]) \
        == ["--a", "1", "--flag", "--c=6", "--b", "3"]
    assert merge_beam_args([], []) == []


def manifest(tmp_path, beam_args):
    """A run's manifest as the launcher writes it (only what a re-run reads)."""
    path = tmp_path / "manifest.json"
    config = {"inputs": [str(DATA / "seed_examples.jsonl")], "output": str(tmp_path / "first"),
              "format": None, "field_map": ["prompt=question"], "max_length": 300}
    path.write_text(json.dumps({"fingerprint": "f", "config": config,
                                "resolved": {"num_shards": 1, "beam_args": beam_args}}))
    return str(path)


def test_a_manifest_reruns_on_its_recorded_runner(tmp_path):
    recorded = ["--runner=DataflowRunner", "--project=p", "--region=r",
                "--temp_location=gs://b/tmp"]
    config, beam_args = load_config(["--config", manifest(tmp_path, recorded)])
    assert beam_args == recorded and config.example.max_length == 300
    assert config.example.field_map == (("prompt", "question"),)
    assert pipeline_runner(beam_args) is None  # Beam picks the recorded runner
    _, beam_args = load_config(["--config", manifest(tmp_path, recorded),
                                "--region=other", "--output", str(tmp_path / "again")])
    assert beam_args == ["--runner=DataflowRunner", "--project=p", "--temp_location=gs://b/tmp",
                         "--region=other"]


def test_a_manifest_of_a_local_run_reruns_locally_as_before(tmp_path):
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    recorded = ["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"]
    for beam_args_recorded in ([], recorded):
        _, beam_args = load_config(["--config", manifest(tmp_path, beam_args_recorded)])
        assert beam_args == []
        assert isinstance(pipeline_runner(beam_args), FnApiRunner)
    _, beam_args = load_config(["--config", manifest(tmp_path, recorded), "--direct_num_workers=3"])
    assert beam_args == ["--direct_num_workers=3"]


def test_inspect_checks_types_the_same_way_and_ignores_beam_options(tmp_path, capsys):
    from sftprep.views.inspect_cli import main as inspect_main

    assert inspect_main(["--config", config_file(tmp_path, "max-length: '64'")]) == 2
    assert "--config: max-length must be an integer, got '64' (a string)" in \
        capsys.readouterr().err
    path = config_file(tmp_path, "beam: {runner: DataflowRunner}\nmax-length: 64\n")
    assert inspect_main(["--config", path, "--index", "0", "--no-color"]) == 0
    assert "tokens=" in capsys.readouterr().out
