"""Bounded resources (issue 13, case 7): hostile inputs cost bounded memory and time.

Each memory bound is measured as the peak RSS of a child process that does only the work
under test, so nothing else the test session holds can hide or inflate it.
"""

from __future__ import annotations

import gzip
import json
import os
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/status"),
                                reason="peak RSS is read from Linux's /proc")

ROOT = pathlib.Path(__file__).resolve().parents[2]
MIB = 1 << 20

# The peak RSS of the child's own program, in MiB: VmHWM, which starts afresh at exec (unlike
# ru_maxrss, which counts the forked copy of this test process before the exec).
PEAK_RSS = """
def peak_rss_mib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
"""

# The child reads a file with the pipeline's reader and prints each record's line, error and
# first 40 characters, then its peak RSS.
READ_CHILD = PEAK_RSS + """
import sys
from sftprep.transforms.read import iter_raw_records
with open(sys.argv[1], "rb") as stream:
    for r in iter_raw_records(sys.argv[1], stream, int(sys.argv[2])):
        print(r.line, r.error, r.text[:40].strip(), sep="\\t")
print("rss_mib", peak_rss_mib())
"""


def run_child(code: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=str(ROOT))


def write_gz(path: pathlib.Path, pieces) -> None:
    """Write a .gz from (bytes, repeat) pieces, streaming: never more than a MiB in memory."""
    with gzip.open(path, "wb", compresslevel=1) as handle:
        for data, repeat in pieces:
            for _ in range(repeat):
                handle.write(data)


def read_in_child(path: pathlib.Path, limit: int):
    result = run_child(READ_CHILD, str(path), str(limit))
    assert result.returncode == 0, result.stderr
    *records, rss = result.stdout.splitlines()
    return [tuple(r.split("\t")) for r in records], int(rss.split()[1])


def test_json_gz_of_hundreds_of_mib_of_spaces_reads_in_bounded_memory(tmp_path):
    """A .json array padded with 384 MiB of spaces: between elements (skipped) and inside one
    element (record_too_large with a preview). Before: the whole document was held (4 MB of
    .json.gz -> 4 GiB of spaces reached 4.4 GB RSS, then MemoryError)."""
    spaces = b" " * MIB
    path = tmp_path / "padded.json.gz"
    write_gz(path, [
        (b"[", 1), (spaces, 128),
        (b'{"prompt": "p", "completion": "c"}', 1), (spaces, 128), (b",", 1),
        (b'{"prompt": "padded", "completion":', 1), (spaces, 128), (b'"c"}', 1),
        (b', {"prompt": "last", "completion": "c"}]', 1), (spaces, 1),
    ])
    assert path.stat().st_size < 4 * MIB  # tiny on disk, 384 MiB expanded
    records, rss = read_in_child(path, 8 * MIB)
    assert records == [
        ("1", "None", '{"prompt": "p", "completion": "c"}'),
        ("2", "record_too_large", '{"prompt": "padded", "completion":'),
        ("3", "None", '{"prompt": "last", "completion": "c"}'),
    ]
    assert rss < 200, f"peak RSS {rss} MiB"


def test_json_that_is_not_an_array_is_read_as_lines_in_bounded_memory(tmp_path):
    """Not an array or an object: the JSON Lines fallback, line by line (a line of any content,
    spaces included, over --max-record-bytes is record_too_large)."""
    path = tmp_path / "spaces.json.gz"
    write_gz(path, [(b" " * MIB, 256), (b"\nnot json\n", 1)])
    records, rss = read_in_child(path, 8 * MIB)
    assert records == [("1", "record_too_large", ""), ("2", "None", "not json")]
    assert rss < 200, f"peak RSS {rss} MiB"


def test_json_array_element_detail_names_its_size(tmp_path):
    from sftprep.transforms.read import iter_raw_records

    data = b'[{"a": "' + b"x" * 5000 + b'"}, {"b": 1}]'
    with open(tmp_path / "a.json", "wb") as handle:
        handle.write(data)
    with open(tmp_path / "a.json", "rb") as stream:
        first, second = iter_raw_records("a.json", stream, 1024)
    assert (first.line, first.error) == (1, "record_too_large")
    assert first.detail == ("5009 bytes > --max-record-bytes 1024; raw holds the first 4096 "
                            "bytes")
    assert first.text == data[1:4097].decode()
    assert (second.line, second.text, second.error) == (2, '{"b": 1}', None)


# Nine levels of nine aliases: 9**9 (387 million) strings, in under 1 KB, as the value of a
# known option, so the old loader got as far as describing its wrong type.
BILLION_LAUGHS = "\n".join(
    ["input: data.jsonl", "max_length:", '  - &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"  - &{n} [{','.join(['*' + p] * 9)}]" for p, n in zip("abcdefgh", "bcdefghi")]
    + ["output: out"]) + "\n"


def test_yaml_billion_laughs_is_refused_in_one_line(tmp_path):
    from sftprep.config import ConfigError, read_config_file

    assert len(BILLION_LAUGHS) < 1024
    path = tmp_path / "laughs.yaml"
    path.write_text(BILLION_LAUGHS)
    with pytest.raises(ConfigError) as raised:
        read_config_file(str(path), lambda p: pathlib.Path(p).read_text())
    assert str(raised.value) == (
        f"--config {path}: line 3: YAML anchors and aliases (&name, *name, <<: *name) are not "
        "supported; write the values out")


@pytest.mark.parametrize("text", [
    "a: &x 1\nb: 2\n",  # an anchor alone
    "base: {max_length: 64}\nrun:\n  <<: *base\n",  # a merge key names an alias
])
def test_yaml_anchors_and_merge_keys_are_refused(tmp_path, text):
    from sftprep.config import ConfigError, read_config_file

    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="anchors and aliases"):
        read_config_file(str(path), lambda p: pathlib.Path(p).read_text())


def test_yaml_syntax_errors_are_one_line(tmp_path):
    from sftprep.config import ConfigError, read_config_file

    path = tmp_path / "c.yaml"
    path.write_text("a: [1, 2\nb: 3\n")
    with pytest.raises(ConfigError) as raised:
        read_config_file(str(path), lambda p: pathlib.Path(p).read_text())
    assert "\n" not in str(raised.value) and str(raised.value).startswith(f"--config {path}: ")


CLI_CHILD = PEAK_RSS + """
import sys
from sftprep.cli import main
code = main(sys.argv[1:])
sys.stderr.flush()
print("rss_mib", peak_rss_mib())
print("exit", code)
"""


@pytest.mark.parametrize("command", ["run", "inspect"])
def test_billion_laughs_config_exits_2_with_one_line_in_bounded_memory(tmp_path, command):
    """Before: a 1 KB config ran out of memory while the error message was being built."""
    (tmp_path / "laughs.yaml").write_text(BILLION_LAUGHS)
    result = run_child(CLI_CHILD, command, "--config", str(tmp_path / "laughs.yaml"),
                       timeout=120)
    rss_line, exit_line = result.stdout.splitlines()[-2:]
    assert exit_line == "exit 2"
    prefix = "sftprep inspect" if command == "inspect" else "sftprep"
    assert result.stderr.splitlines() == [
        f"{prefix}: error: --config {tmp_path / 'laughs.yaml'}: line 3: YAML anchors "
        "and aliases (&name, *name, <<: *name) are not supported; write the values out"]
    assert int(rss_line.split()[1]) < 512  # about 200 MiB of it is run's imports


def test_json_array_reading_is_not_slower_than_a_few_seconds_per_100k_records(tmp_path):
    """The element scanner works in chunks with C regexes, not byte by byte (a generous bound)."""
    import time

    from sftprep.transforms.read import iter_raw_records

    rows = [{"messages": [{"role": "user", "content": f"q{i}, [x] {{y}} \\\"z\\\""},
                          {"role": "assistant", "content": f"a{i}"}]} for i in range(100_000)]
    path = tmp_path / "big.json"
    path.write_text(json.dumps(rows, indent=1))
    started = time.perf_counter()
    with open(path, "rb") as stream:
        records = list(iter_raw_records(str(path), stream, 1 << 20))
    assert time.perf_counter() - started < 60
    assert len(records) == 100_000 and all(r.error is None for r in records)
    assert [json.loads(records[i].text) for i in (0, 99_999)] == [rows[0], rows[99_999]]


def _config(*flags, file_values=None):
    import argparse

    from sftprep.config import add_run_arguments, build_config

    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    return build_config(parser.parse_args(["--input", "a.jsonl", "--output", "o", *flags]),
                        file_values)


def test_max_messages_and_reasoning_options_reach_the_example_path():
    from sftprep.config import ConfigError
    from sftprep.transforms.records import DEFAULT_MAX_MESSAGES
    from sftprep.transforms.templates import TemplateSpec

    spec = TemplateSpec("chatml")
    default = _config().prepare_settings(spec, 0)
    assert (default.max_messages, default.reasoning) == (DEFAULT_MAX_MESSAGES, "keep") == \
        (10_000, "keep")
    flags = _config("--max-messages", "5", "--reasoning", "drop").prepare_settings(spec, 0)
    assert (flags.max_messages, flags.reasoning) == (5, "drop")
    from_file = _config(file_values={"max_messages": 7, "reasoning": "drop"})
    assert (from_file.example.max_messages, from_file.example.reasoning) == (7, "drop")
    with pytest.raises(ConfigError, match=r"^--max-messages must be at least 1$"):
        _config("--max-messages", "0")
    with pytest.raises(ConfigError, match=r"^--reasoning must be one of keep, drop$"):
        _config("--reasoning", "maybe")


def test_an_absurd_dialogue_is_rejected_before_rendering(runtime, token_info):
    """100,000 one-character turns in one record (under 2 MB): one too_many_messages rejection."""
    import time

    from sftprep.transforms.prepare import PrepareSettings, prepare_batch
    from sftprep.transforms.records import RawRecord
    from tests.conftest import spec_for

    turns = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}] * 50_000
    text = json.dumps({"messages": turns})
    started = time.perf_counter()
    batch = prepare_batch([RawRecord("big.jsonl", 1, text)],
                          PrepareSettings(template=spec_for("chatml", token_info)), runtime)
    assert time.perf_counter() - started < 30
    assert [(r.reason, r.detail) for r in batch.rejected] == [
        ("too_many_messages", "100000 messages > --max-messages 10000")]
