"""gs:// inputs, outputs, tokenizer and publishing, against a real storage server on loopback."""

from __future__ import annotations

import gzip
import json
import pathlib
import shutil
import time

import google.auth.credentials
import pyarrow.parquet as pq
import pytest

from sftprep.pipeline import files, gcs, publish
from sftprep.pipeline.run import main
from sftprep.tokenizer.load import default_tokenizer_dir
from tests.conftest import DATA
from tests.gcs_emulator import BUCKET, refusing_server

INPUTS = ("alpaca_en_demo.jsonl", "glaive_toolcall_en_demo.jsonl.gz", "seed_examples.json")
OPTIONS = ("--template", "chatml", "--validation-fraction", "0.1", "--max-length", "1024")


def run(*args) -> int:
    return main([str(a) for a in args])


def local_tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def write_inputs(folder: pathlib.Path) -> None:
    """INPUTS from tests/data: JSON Lines as is, gzipped, and as one JSON array."""
    folder.mkdir()
    shutil.copy(DATA / INPUTS[0], folder / INPUTS[0])
    (folder / INPUTS[1]).write_bytes(
        gzip.compress((DATA / "glaive_toolcall_en_demo.jsonl").read_bytes(), mtime=0))
    lines = (DATA / "seed_examples.jsonl").read_text(encoding="utf-8").splitlines()
    (folder / INPUTS[2]).write_text(json.dumps([json.loads(line) for line in lines], indent=1),
                                    encoding="utf-8")


def test_gs_run_is_byte_identical_to_the_local_run(gcs, tmp_path, capsys, monkeypatch):
    """.jsonl, .jsonl.gz and .json inputs read from the bucket give the local run's bytes."""
    local_in = tmp_path / "in"
    write_inputs(local_in)
    for name in INPUTS:
        gcs.upload(local_in / name, f"gs://{BUCKET}/same/in/{name}")
    tokenizer_url = f"gs://{BUCKET}/same/tokenizer"
    for path in pathlib.Path(default_tokenizer_dir()).glob("tokenizer*.json"):
        gcs.upload(path, f"{tokenizer_url}/{path.name}")

    assert run("--input", local_in / "*.json*", "--output", tmp_path / "out", *OPTIONS) == 0
    remote_args = ("--input", f"gs://{BUCKET}/same/in/*.json*", "--output",
                   f"gs://{BUCKET}/same/out", "--tokenizer", tokenizer_url, *OPTIONS)
    assert run(*remote_args) == 0
    assert "output in gs://" in capsys.readouterr().out

    local, remote = local_tree(tmp_path / "out"), gcs.read_tree(f"gs://{BUCKET}/same/out")
    assert set(remote) == set(local)
    assert {"stats.json", "train/part-00000-of-00001.parquet",
            "validation/part-00000-of-00001.parquet"} <= set(remote)
    for name in sorted(set(local) - {"manifest.json"}):
        assert remote[name] == local[name], name
    local_manifest, manifest = (json.loads(t["manifest.json"]) for t in (local, remote))
    assert manifest["outputs"] == local_manifest["outputs"]
    assert manifest["config"]["tokenizer"] == tokenizer_url
    # Every input, whatever its format, gave rows.
    per_source = json.loads(remote["stats.json"])["per_source"]
    assert set(per_source) == set(INPUTS) and all(s["written"] > 0 for s in per_source.values())
    # Inputs are fingerprinted from object metadata; local files by their sha256.
    for entry in manifest["inputs"]:
        assert set(entry) == {"path", "size", "generation", "crc32c", "md5"}
        assert entry["path"].startswith(f"gs://{BUCKET}/same/in/") and entry["size"] > 0
    assert set(local_manifest["inputs"][0]) == {"path", "size", "sha256"}
    # The rows read back from the bucket name their source relative to the input folder.
    with files.open_read(f"gs://{BUCKET}/same/out/train/part-00000-of-00001.parquet") as f:
        table = pq.read_table(f)
    assert set(table.column("source").to_pylist()) == set(INPUTS)
    assert table.num_rows == manifest["summary"]["rows_by_split"]["train"]

    # Skipped as unchanged, the run still removes its temporary copy of the gs:// tokenizer.
    copies, fetch = [], files.local_directory
    monkeypatch.setattr(files, "local_directory", lambda where: copies.append(fetch(where))
                        or copies[-1])
    assert run(*remote_args, "--skip-if-unchanged") == 0
    assert "unchanged" in capsys.readouterr().out
    assert copies and not any(pathlib.Path(c).exists() for c in copies)
    assert files._LOCAL_COPIES == {}


def test_gs_publish_skip_and_rebuild(gcs, tmp_path, capsys):
    data = tmp_path / "seed.jsonl"
    shutil.copy(DATA / "seed_examples.jsonl", data)
    gcs.upload(data, f"gs://{BUCKET}/pub/in/seed.jsonl")
    out = f"gs://{BUCKET}/pub/out"
    base = ["--input", f"gs://{BUCKET}/pub/in/", "--output", out, "--publish",
            "--skip-if-unchanged", "--keep-runs", "1"]

    assert run(*base) == 0
    first = publish.read_latest(out)
    assert publish.resolve(out) == f"{out}/runs/{first['run']}"
    objects = gcs.read_tree(out)
    manifest = json.loads(objects[f"runs/{first['run']}/manifest.json"])
    for entry in manifest["outputs"]:  # every output the manifest lists is in the bucket, intact
        assert files.sha256_hex(objects[f"runs/{first['run']}/{entry['path']}"]) == entry["sha256"]
    # The same run published on local disk has the same bytes (the manifest aside, as above).
    local_out = tmp_path / "local"
    assert run("--input", data, "--output", local_out, "--publish") == 0
    local = local_tree(local_out / publish.read_latest(str(local_out))["path"])
    published = {name.split("/", 2)[2]: blob for name, blob in objects.items()
                 if name.startswith(f"runs/{first['run']}/")}
    assert set(published) == set(local) and "train/part-00000-of-00001.parquet" in local
    for name in sorted(set(local) - {"manifest.json"}):
        assert published[name] == local[name], name

    # Failed runs leave LATEST and the published run as they were.
    gcs.upload_bytes(b'{"prompt": "ok", "completion": "fine"}\n{broken\n{"x": 1}\n',
                     f"gs://{BUCKET}/pub/bad/bad.jsonl")
    bad = [f"gs://{BUCKET}/pub/bad/" if a == base[1] else a for a in base]
    capsys.readouterr()
    assert run(*bad) == 1  # 2 of 3 records rejected: beyond --max-rejected-fraction
    assert "--max-rejected-fraction" in capsys.readouterr().err
    assert run(*bad, "--template", "nope") == 2  # refused once its run folder was prepared
    after = gcs.read_tree(out)
    assert {name: after.get(name) for name in objects} == objects
    # The rejected run's own folder is there, never published (--keep-runs prunes it later).
    assert {name.split("/")[1] for name in after if name.startswith("runs/")} > {first["run"]}
    assert [name for name in after if name.endswith("manifest.json")] == [
        f"runs/{first['run']}/manifest.json"]
    assert publish.read_latest(out) == first
    capsys.readouterr()

    assert run(*base) == 0
    assert "unchanged" in capsys.readouterr().out
    assert publish.read_latest(out) == first

    time.sleep(1.1)  # run ids have one-second resolution
    data.write_bytes(data.read_bytes().replace(b"Bonjour", b"Bonjour!"))
    gcs.upload(data, f"gs://{BUCKET}/pub/in/seed.jsonl")  # a new generation of the object
    assert run(*base, "--direct_num_workers", "2",
               "--direct_running_mode", "multi_processing") == 0
    second = publish.read_latest(out)
    assert second["run"] != first["run"]
    # --keep-runs 1: the first run is gone from the bucket, the new one is complete.
    runs = {name.split("/")[1] for name in gcs.read_tree(out) if name.startswith("runs/")}
    assert runs == {second["run"]}
    assert json.loads(files.read_text(f"{out}/runs/{second['run']}/stats.json"))["rows_written"] > 0


@pytest.mark.parametrize("args, message", [
    (["--input", "gs://no-such-bucket/in/*.jsonl", "--output", "OUT"],
     "--input gs://no-such-bucket/in/*.jsonl: gs://no-such-bucket does not exist"),
    (["--input", f"gs://{BUCKET}/nothing-here/*.jsonl", "--output", "OUT"],
     f"--input matched no files: gs://{BUCKET}/nothing-here/*.jsonl"),
    (["--input", str(DATA / "seed_examples.jsonl"), "--output", "gs://no-such-bucket/out"],
     "--output gs://no-such-bucket/out: gs://no-such-bucket does not exist"),
    (["--input", str(DATA / "seed_examples.jsonl"), "--output", "OUT",
      "--tokenizer", "gs://no-such-bucket/tok"],
     "gs://no-such-bucket/tok: gs://no-such-bucket does not exist"),
])
def test_storage_errors_are_one_clear_line(gcs, tmp_path, capsys, args, message):
    args = [str(tmp_path / "out") if a == "OUT" else a for a in args]
    assert run(*args) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"sftprep: error: {message}" or message in err
    assert len(err.strip().splitlines()) == 1


def test_star_stops_at_slash_and_double_star_crosses_it(gcs):
    root = f"gs://{BUCKET}/glob/"
    for name in ("a.jsonl", "sub/x.jsonl", "sub/deeper/y.jsonl", "b.txt"):
        gcs.upload_bytes(b'{"prompt": "p", "completion": "c"}\n', root + name)

    def matched(*patterns):
        return [f.path[len(root):] for f in files.expand_inputs(patterns)]

    assert matched(root + "*.jsonl") == ["a.jsonl"]
    assert matched(root + "*/*.jsonl") == ["sub/x.jsonl"]
    assert matched(root + "**.jsonl") == ["a.jsonl", "sub/deeper/y.jsonl", "sub/x.jsonl"]
    assert matched(root) == ["a.jsonl", "sub/deeper/y.jsonl", "sub/x.jsonl"]  # a folder: all under it


class _Token(google.auth.credentials.Credentials):
    """Credentials that always refresh: a refused request reaches the caller as a 401."""

    def refresh(self, request) -> None:
        self.token = "token"


def test_unauthenticated_access_is_one_line(tmp_path, capsys, monkeypatch):
    from google.cloud import storage

    out = str(tmp_path / "out")
    with refusing_server() as url:
        # No credentials (an emulator or --no_auth): every location says so in one line.
        monkeypatch.setenv(gcs.EMULATOR_ENV, url)
        for args, where in [
                (["--input", "gs://private/in/*.jsonl", "--output", out],
                 "--input gs://private/in/*.jsonl: "),
                (["--input", "gs://private/in/", "--output", out], "--input gs://private/in/: "),
                (["--input", DATA / "seed_examples.jsonl", "--output", "gs://private/out"],
                 "--output gs://private/out: "),
                (["--input", DATA / "seed_examples.jsonl", "--output", out,
                  "--tokenizer", "gs://private/tok"], "gs://private/tok: ")]:
            assert run(*args) == 2
            err = capsys.readouterr().err
            assert err.startswith(f"sftprep: error: {where}") and err.count("\n") == 1, err
            assert "gs://private: refused without credentials" in err
        # Credentials that the bucket refuses: google-cloud-storage raises Unauthorized (401).
        monkeypatch.delenv(gcs.EMULATOR_ENV)
        monkeypatch.setattr(gcs, "_configured", type(gcs._configured)())
        monkeypatch.setattr(gcs, "_client", lambda: storage.Client(
            project="test", credentials=_Token(), client_options={"api_endpoint": url}))
        assert run("--input", "gs://private/in/*.jsonl", "--output", out) == 2
    err = capsys.readouterr().err
    assert err == ("sftprep: error: --input gs://private/in/*.jsonl: gs://private: not "
                   "authenticated; run `gcloud auth application-default login` or set "
                   "GOOGLE_APPLICATION_CREDENTIALS\n")


def test_permission_and_auth_failures_are_named(monkeypatch):

    from google.api_core import exceptions

    monkeypatch.setattr(gcs, "_configured", type(gcs._configured)())
    forbidden = exceptions.Forbidden("sa@p.iam does not have storage.objects.create access")
    assert "permission denied" in gcs.describe_error("gs://b/out", forbidden)
    unauthorized = exceptions.Unauthorized("Anonymous caller does not have storage.objects.list")
    assert "not authenticated" in gcs.describe_error("gs://b/in", unauthorized)
    wrapped = f"List operation failed with exceptions {{'gs://b/in/': {unauthorized!r}}}"
    assert "not authenticated" in gcs.describe_error("gs://b/in", OSError(wrapped))
    from google.auth.exceptions import DefaultCredentialsError

    assert "gcloud auth application-default login" in gcs.describe_error(
        "gs://b/in/x", DefaultCredentialsError("Your default credentials were not found"))
    assert gcs.describe_error("/local/path", forbidden) is None


def test_emulator_runs_skip_the_credential_lookup(monkeypatch):
    """With STORAGE_EMULATOR_HOST set, Beam gets 'no credentials' without asking google.auth,
    whose retries would cost about 20 s per process."""
    import google.auth
    from apache_beam.internal.gcp import auth
    from apache_beam.options.pipeline_options import PipelineOptions

    asked = []
    monkeypatch.setattr(google.auth, "default", lambda *a, **k: asked.append(a) or (None, None))
    monkeypatch.setattr(auth._Credentials, "_credentials_init", False)
    monkeypatch.setattr(auth._Credentials, "_credentials", None)
    monkeypatch.setattr(gcs, "_configured", type(gcs._configured)())
    monkeypatch.delenv(gcs.EMULATOR_ENV, raising=False)
    gcs.use_anonymous_access()
    assert not gcs._configured.is_set()  # a plain run leaves Google's resolution alone

    monkeypatch.setenv(gcs.EMULATOR_ENV, "http://127.0.0.1:1")
    gcs.use_anonymous_access()
    assert auth.get_service_credentials(PipelineOptions()) is None
    assert asked == []


def test_no_auth_flag_also_skips_the_lookup(monkeypatch):
    from apache_beam.internal.gcp import auth

    monkeypatch.setattr(auth._Credentials, "_credentials_init", False)
    monkeypatch.setattr(gcs, "_configured", type(gcs._configured)())
    monkeypatch.delenv(gcs.EMULATOR_ENV, raising=False)
    gcs.use_anonymous_access(("--runner", "DirectRunner", "--no_auth"))
    assert auth._Credentials._credentials_init and auth._Credentials._credentials is None
