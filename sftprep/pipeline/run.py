"""`sftprep run`: resolve everything once at launch, then run the plan, on Beam or inline.

The launcher expands the inputs, loads and extends the tokenizer, resolves the template and
writes the final tokenizer next to the data; workers only read that tokenizer file back. The
app's flags and Beam's options are split with `parse_known_args`. The plan runs on Beam
(beam_job.py: in-process on Beam's FnApiRunner, offline, without --runner), or, for a small
local run with no Beam option, in this process without Beam (inline.py), which writes the same
bytes without Beam's start-up (--local-engine). Beam is imported only when it runs the plan.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import platform
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from typing import Any, Dict, FrozenSet, List, Optional, Sequence

import sftprep
from sftprep import storage
from sftprep.config import (
    ConfigError, RunConfig, add_run_arguments, build_config, read_config_file, resolve_beam_args)
from sftprep.options import Parser, did_you_mean, flags_of

from sftprep.pipeline import files, gcs, ownership, publish
from sftprep.pipeline.finish import Publishing, RunFailed
from sftprep.pipeline.plan import Plan, names_runner
from sftprep.pipeline.local_workers import can_fork
from sftprep.pipeline.lock import OutputLock
from sftprep.pipeline.progress import ProgressPrinter
from sftprep.pipeline.read import DEFAULT_RANGE_BYTES, range_size
from sftprep.dataset import DEFAULT_PACKER, output_schema
from sftprep.sources import source_names, source_tags
from sftprep.transforms.prepare import resolve_template_and_tokenizer
from sftprep.transforms.templates import BUILTIN_TEMPLATES, TemplateSpec
from sftprep.tokenizer.runtime import usable_cpus
from sftprep.tokenizer.runtime import TokenizerRuntime
from sftprep.tokenizer.load import TokenizerInfo, TokenizerSource, source_fingerprint

def make_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="sftprep run",
        description="Turn instruction/chat JSONL into training-ready Parquet shards. Options not "
                    "listed here are passed to Beam (e.g. --runner, --project, --region); an "
                    "option neither knows is an error.")
    add_run_arguments(parser)
    parser.add_argument("--verbose", action="store_true",
                        help="show Beam's log and the traceback of any error")
    return parser


def check_beam_options(beam_args: Sequence[str]) -> None:
    """Beam's options, checked at launch as Beam will read them: an unknown option, a value of
    the wrong type or an unknown --runner is one ConfigError line, before anything is written."""
    from apache_beam.options import pipeline_options as beam_options

    class StrictParser(beam_options._BeamArgumentParser):  # pylint: disable=protected-access
        def error(self, message: str):
            raise ConfigError(f"Beam option: {message}")

    parser = StrictParser(allow_abbrev=False, add_help=False)
    seen: Dict[str, type] = {}
    for cls in beam_options.PipelineOptions.__subclasses__():
        seen.setdefault(str(cls), cls)
    for cls in seen.values():
        cls._add_argparse_args(parser)  # pylint: disable=protected-access
    known, unknown = parser.parse_known_args(list(beam_args))
    if unknown:
        hint = did_you_mean(unknown[0], flags_of(make_parser()) + flags_of(parser)) \
            if unknown[0].startswith("--") else ""
        raise ConfigError(f"unknown option {unknown[0]!r}: neither sftprep nor Beam knows it"
                          + (hint or " (sftprep run --help lists sftprep's)"))
    if known.runner:
        from apache_beam.runners.runner import create_runner

        try:
            create_runner(known.runner)
        except (ValueError, ImportError) as err:
            raise ConfigError(f"--runner {known.runner}: {str(err).splitlines()[0]}") from None


def load_config(argv: Sequence[str]) -> "tuple[RunConfig, List[str]]":
    """The run config (defaults < --config file < flags) and Beam's arguments (the file's, with
    those of the command line overriding and added)."""
    args, cli_beam_args = make_parser().parse_known_args(list(argv))
    file_values = read_config_file(args.config, files.read_text) if args.config else None
    return build_config(args, file_values), resolve_beam_args(file_values, cli_beam_args)


def prepare_tokenizer(config: RunConfig
                      ) -> "tuple[TemplateSpec, TokenizerInfo, TokenizerSource, Dict[str, bytes]]":
    """Load the tokenizer, resolve the template and add its control tokens, in memory: a wrong
    template or tokenizer fails here, before the output is touched (see save_tokenizer)."""
    template, source, tokenizer_files, info = resolve_template_and_tokenizer(
        files.local_directory(config.tokenizer), config.template, read_file=files.read_text,
        **config.template_options())
    return template, info, source, tokenizer_files


def save_tokenizer(tokenizer_files: Dict[str, bytes], data_dir: str) -> None:
    for name, data in sorted(tokenizer_files.items()):
        files.write_bytes(files.join(data_dir, "tokenizer", name), data)


def files_read(config: RunConfig, inputs: Sequence[files.InputFile]) -> List["tuple[str, str]"]:
    """(flag, path) of everything the run reads: none of it may lie inside the output."""
    reads = [("--input", f.path) for f in inputs]
    if "://" in config.tokenizer or os.path.exists(config.tokenizer):
        reads.append(("--tokenizer", config.tokenizer))
    if config.template not in BUILTIN_TEMPLATES + ("tokenizer",):
        reads.append(("--template", config.template))
    return reads


def _versions() -> Dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"sftprep": sftprep.__version__, "python": platform.python_version()}
    for package in ("apache-beam", "pyarrow", "numpy", "tokenizers", "transformers"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "absent"
    return out


FORKED_LOCAL_BYTES = 4 * 1024 * 1024  # local runs this large fork a child process per core


def local_processes(chosen: int, total_bytes: int, output: str) -> int:
    """Children forked by a local in-process run for its batches and shards (`local_workers`):
    --local-processes, else one per usable core from FORKED_LOCAL_BYTES of input on. 0 (all
    in this process) for one, where the platform cannot fork, and for a remote output (gs://),
    whose client connections a fork would share with the children."""
    processes = chosen or (usable_cpus() if total_bytes >= FORKED_LOCAL_BYTES else 1)
    return processes if processes > 1 and can_fork() and not storage.is_remote(output) else 0


def _show_progress(setting: str) -> bool:
    return setting == "always" or (setting == "auto" and sys.stderr.isatty())


def _template_fingerprint(template: str) -> str:
    if template in BUILTIN_TEMPLATES + ("tokenizer",):
        return template
    try:
        return hashlib.sha256(files.read_text(template).encode()).hexdigest()
    except OSError:
        return template  # reported as unknown when the template is resolved


def _unchanged_since(config: RunConfig, fingerprint: str) -> Optional[str]:
    """The manifest of the last complete (or published) run if it has this fingerprint."""
    previous = files.join(publish.resolve(config.output), files.MANIFEST)
    if files.exists(previous) and \
            json.loads(files.read_text(previous)).get("fingerprint") == fingerprint:
        return previous
    return None


def _manifest_base(launch: Launch, publishing: Optional[Publishing], num_shards: int,
                   validation_shards: int) -> Dict[str, Any]:
    """Everything the manifest says that is known at launch; the writers add the outputs."""
    config, template, tokenizer, started = (launch.config, launch.template, launch.tokenizer,
                                            launch.started)
    return {
        "format_version": 1,
        "fingerprint": launch.fingerprint,
        "run_id": publishing.run_id if publishing else None,
        "config": config.to_dict(),
        "resolved": {"num_shards": num_shards, "validation_shards": validation_shards,
                     "beam_args": list(launch.beam_args)},
        "inputs": [f.as_dict() for f in launch.inputs],
        "tokenizer": {"path": "tokenizer", "name": tokenizer.name,
                      "fingerprint": tokenizer.fingerprint, "added_tokens": tokenizer.added_tokens,
                      "vocab_size": tokenizer.vocab_size, "bos": template.bos,
                      "eos": template.eos},
        "template": {"name": config.template, "kind": template.name, "origin": template.origin,
                     "fingerprint": template.fingerprint()},
        "schema": {**{field.name: str(field.type) for field in output_schema(config.pack_length)},
                   **({("repeats" if config.pack_length else "repeat"):
                       ("list<item: int32>" if config.pack_length else "int32")}
                      if config.mixture and config.mixture.mixes else {})},
        **({"packing": {"pack_length": config.pack_length, "packer": DEFAULT_PACKER}}
           if config.pack_length else {}),
        "versions": _versions(),
        "timings": {"started_at": started, "launch_seconds": round(time.time() - started, 3)},
        files.INPUT_STATE: files.input_state(launch.inputs),  # finish.py pops it
    }


def run(argv: Sequence[str]) -> int:
    """`sftprep run`, then drop the temporary copy of a gs:// tokenizer, however the run ended.

    Everything is checked before anything is written or deleted: options (sftprep's and
    Beam's, the runner), the inputs, the tokenizer and template (loaded), and the output (see
    ownership.py). Then the output's lock is taken (lock.py) and held until the run ends.

    What a run that fails after launch leaves, per storage (local disk and gs:// alike):
    - with --publish, the previous complete run and LATEST stay untouched; the new run's folder
      under runs/ never gets a manifest, and a later run prunes it;
    - without --publish, the output is rewritten in place: the old manifest is deleted first and
      the new one written last, so nothing is presented as complete until the new run is.
    """
    try:
        return _run(argv)
    finally:
        files.drop_local_copies()


def launch_inputs(config: RunConfig) -> "tuple[List[files.InputFile], Dict[str, str]]":
    """The input files, each expanded and fingerprinted once, and each one's `source` tag (a
    mixture's sources expand their own globs; their files are fingerprinted together)."""
    if config.mixture is None:
        inputs = files.expand_inputs(config.inputs)
        return inputs, source_names([f.path for f in inputs])
    matched: Dict[str, Optional[gcs.ObjectInfo]] = {}

    def expand(globs: Sequence[str]) -> List[str]:
        found = files.match_inputs(globs)
        matched.update(found)
        return list(found)

    names = source_tags(config.mixture, expand, source_names)
    return files.fingerprint_inputs(matched), names


def _run(argv: Sequence[str]) -> int:
    started = time.time()
    gcs.use_anonymous_access(tuple(argv))
    config, beam_args = load_config(argv)
    gcs.use_anonymous_access(tuple(beam_args))  # --no_auth may come from the --config file
    if beam_args:
        check_beam_options(beam_args)
    inputs, names = launch_inputs(config)
    inline = runs_inline(config, beam_args, sum(f.size for f in inputs))
    template, tokenizer, source, tokenizer_files = prepare_tokenizer(config)
    fingerprint = publish.run_fingerprint(
        inputs=[f.as_dict() for f in inputs], config=config.to_dict(),
        tokenizer_files=source_fingerprint(files.local_directory(config.tokenizer)),
        template=_template_fingerprint(config.template))
    previous = _unchanged_since(config, fingerprint) if config.skip_if_unchanged else None
    if previous:
        print(f"sftprep: inputs, options, tokenizer, template and code are unchanged since "
              f"{previous}; nothing to do")
        return 0
    reads = files_read(config, inputs)
    config_path = make_parser().parse_known_args(list(argv))[0].config
    if config_path:
        reads.append(("--config", config_path))
    ownership.check_output(config.output, reads)  # before the lock creates the folder
    launch = Launch(config, list(beam_args), list(inputs), template, tokenizer, source,
                    tokenizer_files, fingerprint, started, verbose="--verbose" in argv,
                    names=names, inline=inline)
    with OutputLock(config.output):
        listed = ownership.check_output(config.output, reads)  # again, now as the only writer
        return _run_locked(launch, listed)


@dataclasses.dataclass(frozen=True)
class Launch:
    """What the launch checked and resolved, before the output is touched."""

    config: RunConfig
    beam_args: List[str]
    inputs: List[files.InputFile]
    template: TemplateSpec
    tokenizer: TokenizerInfo
    source: TokenizerSource
    tokenizer_files: Dict[str, bytes]
    fingerprint: str
    started: float
    verbose: bool = False
    names: Dict[str, str] = dataclasses.field(default_factory=dict)  # path -> `source` tag
    inline: bool = False  # run without Beam (runs_inline)


def _run_locked(launch: Launch, listed: FrozenSet[str]) -> int:
    """Claim the output (its marker first), then run the plan."""
    config, inputs, started = launch.config, launch.inputs, launch.started
    data_dir, publishing = config.output, None
    if config.publish:
        run_id = publish.new_run_id(started, launch.fingerprint)
        data_dir = files.join(config.output, publish.RUNS, run_id)
        publishing = Publishing(config.output, run_id, config.keep_runs)
        ownership.claim(config.output, listed, ownership.PUBLISH_ENTRIES)
        ownership.claim(data_dir, frozenset(), ownership.DATASET_ENTRIES)
    else:
        ownership.claim(config.output, listed, ownership.DATASET_ENTRIES)
        ownership.clear_dataset(config.output, listed)
    total_bytes = sum(f.size for f in inputs)
    num_shards, validation_shards = config.shard_counts(total_bytes)
    save_tokenizer(launch.tokenizer_files, data_dir)
    settings = config.prepare_settings(launch.template, total_bytes)
    manifest_base = _manifest_base(launch, publishing, num_shards, validation_shards)
    progress_dir = tempfile.mkdtemp(prefix="sftprep-progress-") \
        if _show_progress(config.progress) and not names_runner(launch.beam_args) else None
    plan = Plan(
        inputs=[(f.path, f.size, launch.names[f.path]) for f in inputs], output=data_dir,
        settings=settings, tokenizer_json_path=files.join(data_dir, "tokenizer", "tokenizer.json"),
        max_record_bytes=config.max_record_bytes, batch_size=config.batch_size,
        range_bytes=config.range_bytes or DEFAULT_RANGE_BYTES, manifest_base=manifest_base,
        max_rejected_fraction=config.max_rejected_fraction, publishing=publishing,
        progress_dir=progress_dir,
        mixing=config.mixture.mixing(config.example.seed) if config.mixture else None,
        source_order=tuple(s.name for s in config.mixture.sources) if config.mixture else ())
    printer = ProgressPrinter(progress_dir, total_bytes).start() if progress_dir else None
    try:
        if not execute(plan, launch):
            return 0  # a dry run
    except Exception as err:
        if _run_failure(err) is not None:  # the checks failed: say what was counted, then why
            with contextlib.suppress(Exception):  # no stats.json: the failure line alone says it
                print_summary(data_dir, time.time() - started, complete=False)
        raise
    finally:
        if printer:
            printer.stop()
        if progress_dir:
            shutil.rmtree(progress_dir, ignore_errors=True)
        files.drop_local_copies()
    print_summary(data_dir, time.time() - started)
    if publishing:
        print(f"sftprep: published {publishing.run_id} ({files.join(config.output, 'LATEST')})")
    return 0


def execute(plan: Plan, launch: Launch) -> bool:
    """Run the plan to the end, inline or on Beam (`Launch.inline`); False for a dry run (the
    Beam job built, not run)."""
    config = launch.config
    total_bytes = sum(f.size for f in launch.inputs)

    def runtime() -> TokenizerRuntime:  # the launcher's tokenizer, for runs in this process
        return TokenizerRuntime(launch.source.backend(), launch.template.bos)

    def processes() -> int:
        return local_processes(config.local_processes, total_bytes, config.output)

    if launch.inline:
        from sftprep.pipeline.inline import run_inline

        children = processes()
        run_inline(dataclasses.replace(
            plan, local_processes=children,
            range_bytes=range_size(config.range_bytes, children, total_bytes)), runtime())
        return True
    from sftprep.pipeline.beam_job import run_on_beam

    return run_on_beam(plan, launch.beam_args, config.range_bytes, runtime, processes,
                       launch.verbose)


def runs_inline(config: RunConfig, beam_args: Sequence[str], total_bytes: int) -> bool:
    """Whether the plan runs inline (inline.py) rather than on Beam: --local-engine, and with
    `auto` a run with no Beam option that is either small (under FORKED_LOCAL_BYTES) or forks
    its children (`local_processes`). Beam keeps the rest: a runner or any Beam option, and a
    large run in one process (--local-processes 1, a gs:// output, no fork), where its
    in-process runner overlaps tokenizing with the Python work or starts its own workers."""
    if config.local_engine == "inline":
        if beam_args:
            raise ConfigError(f"--local-engine inline runs without Beam: the Beam option "
                              f"{beam_args[0]} needs --local-engine beam (or auto)")
        return True
    return config.local_engine == "auto" and not beam_args and (
        total_bytes < FORKED_LOCAL_BYTES
        or local_processes(config.local_processes, total_bytes, config.output) > 1)


def print_summary(output: str, seconds: float, complete: bool = True) -> None:
    stats = json.loads(files.read_text(files.join(output, "stats.json")))
    by_split = ", ".join(f"{split} {n}" for split, n in sorted(stats["rows_by_split"].items()))
    print(f"sftprep: read {stats['records_read']} records in {seconds:.1f}s; wrote "
          f"{stats['rows_written']} rows ({by_split or 'none'}); rejected {stats['rejected']}, "
          f"dropped {stats['dropped']}, duplicates {stats['duplicates']}, truncated "
          f"{stats['rows_truncated']}")
    if stats.get("repeats") or stats.get("sampled_out"):
        print(f"sftprep: mixture: {stats['repeats']} repeated rows, {stats['sampled_out']} "
              "examples sampled out (stats.json: mixture)")
    reasons = {**stats["rejected_by_reason"], **stats["dropped_by_reason"]}
    if reasons:
        print("sftprep: not used, by reason: "
              + ", ".join(f"{r} {n}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1])))
    for split, packing in sorted(stats.get("packing", {}).items()):
        print(f"sftprep: {split}: {packing['examples']} examples in {packing['packs']} packs of "
              f"at most {packing['pack_length']} tokens, efficiency {packing['efficiency']:.2%}")
    tokens = stats.get("tokens", {}).get("train", {})
    if tokens:
        print(f"sftprep: train tokens {tokens.get('total', 0)}, trained {tokens.get('trainable', 0)}")
    if complete:
        print(f"sftprep: output in {output} (manifest.json, stats.json, rejected/)")


def _run_failure(err: BaseException) -> Optional[str]:
    """The one-line reason of a run that failed its final checks (RunFailed, raised as is or
    wrapped by a runner); None for any other error."""
    message = str(err)
    marker = f"{RunFailed.__name__}: "
    if marker in message:
        message = message.rpartition(marker)[2]
    elif not isinstance(err, RunFailed):
        return None
    return message.splitlines()[0].split(" [while running")[0] if message else ""


class _HideRunFailedLogs(logging.Filter):
    """Drops the runner's ERROR records (with their tracebacks) about a RunFailed: the failure
    is said once, in sftprep's own line. Also drops the warning every local worker process
    logs about its semi_persistent_directory, which asks nothing of the user. --verbose keeps
    them all."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return "No semi_persistent_directory found" not in str(record.msg) + str(record.args)
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += " " + repr(record.exc_info[1])
        return RunFailed.__name__ not in text


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        for old in [f for f in handler.filters if isinstance(f, _HideRunFailedLogs)]:
            handler.removeFilter(old)
        if not verbose:
            handler.addFilter(_HideRunFailedLogs())


@contextlib.contextmanager
def _terminate_as_exit():
    """SIGTERM (a scheduler stopping the job) unwinds like Ctrl-C, so the output's lock is
    released; the previous handler comes back afterwards. Only where Python allows it (the
    main thread) and where nobody installed a handler of their own."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Every error is one line (`sftprep: error: ...`, exit 2 for what the user must fix at
    launch; `sftprep: run failed: ...`, exit 1 for a run that failed later). --verbose shows
    Beam's log and the traceback."""
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in args
    _configure_logging(verbose)
    try:
        with _terminate_as_exit():
            return run(args)
    except (Exception, KeyboardInterrupt) as err:  # runners raise ours as is or wrapped
        if verbose:
            traceback.print_exc()
        if isinstance(err, (ConfigError, ValueError)):
            print(f"sftprep: error: {err}", file=sys.stderr)
            return 2
        if isinstance(err, KeyboardInterrupt):
            print("sftprep: interrupted; nothing of this run is presented as complete",
                  file=sys.stderr)
            return 130
        failure = _run_failure(err)
        if failure is not None:
            print(f"sftprep: run failed: {failure}", file=sys.stderr)
            return 1
        first = (str(err).strip().splitlines() or [""])[0][:500]
        print(f"sftprep: error: {type(err).__name__}: {first}"
              + ("" if verbose else " (--verbose shows the traceback)"), file=sys.stderr)
        return 1
