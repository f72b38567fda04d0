"""Preprocessing under faults: dead workers, concurrent runs, empty results, damaged input, unwritable output.

Process faults use real processes: the tool in a fresh interpreter, its real pool workers, real signals.
Every failure must be a non-zero exit with one line on stderr naming the file or flag, and leave no output.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import signal
import subprocess

import pytest
from anchor_data_helpers import (
    big_corpus,
    child_pids,
    corpus_texts,
    hf_tokenizer_dir,
    read_documents,
    read_only,
    run_tool,
    sp_model,
    tool,
    tool_command,
    wait_for,
    write_jsonl,
)

from megatron_anchor.data import AnchorPackedDataset, build_train_valid_test_datasets
from tests.disk_limits import file_size_limit

S = 256


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A ~20 MB corpus: seconds of work, so that a run can be frozen while it writes."""
    return big_corpus(tmp_path_factory.mktemp("corpus") / "big.jsonl")


@contextlib.contextmanager
def running(command: list[str]):
    """A process group started from ``command``; killed on the way out if it still runs."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()


def outputs(directory, name: str = "out") -> list[str]:
    """Every file the tool left for an output prefix (final, temporary, lock)."""
    return sorted(path.name for path in directory.glob(f"{name}*"))


def one_line_error(err: str) -> str:
    """The single ``error:`` line of stderr; fails on tracebacks or several lines."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-2000:]
    return lines[0]


def test_dead_worker_ends_the_run_at_once(tmp_path, corpus):
    """Case 7: SIGKILL of a pool worker mid-run (the OOM killer's way): a one-line error, not a hang."""
    command = tool_command("--input", corpus, "--output-prefix", tmp_path / "out", "--workers", 2)
    with running(command) as process:
        bins = lambda: list(tmp_path.glob("out_text_document.bin*tmp"))
        wait_for(lambda: any(path.stat().st_size for path in bins()), "the run to write")
        os.killpg(process.pid, signal.SIGSTOP)  # freeze the run mid-way: the kill cannot come too late
        workers = child_pids(process.pid)
        assert len(workers) >= 2 and "out_text_document.bin" not in outputs(tmp_path)
        os.kill(workers[0], signal.SIGKILL)
        os.killpg(process.pid, signal.SIGCONT)
        try:
            out, err = process.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            pytest.fail("the tool hung after a worker was killed")
    assert process.returncode == 1, out
    assert f"worker process {workers[0]} was killed by SIGKILL; nothing was written" in one_line_error(err)
    assert outputs(tmp_path) == []  # no output, no temporary file, no lock


def test_second_run_to_a_locked_prefix_is_refused(tmp_path, corpus):
    """Case 8: a run is frozen while it writes; a second run to its prefix is refused; the first completes."""
    write_jsonl(tmp_path / "other.jsonl", corpus_texts(40))
    first_command = tool_command("--input", corpus, "--output-prefix", tmp_path / "out", "--workers", 2)
    with running(first_command) as first:
        wait_for(lambda: outputs(tmp_path), "the first run to open its output")
        os.killpg(first.pid, signal.SIGSTOP)
        second = subprocess.run(
            tool_command("--input", tmp_path / "other.jsonl", "--output-prefix", tmp_path / "out"),
            capture_output=True,
            text=True,
            timeout=120,
        )
        os.killpg(first.pid, signal.SIGCONT)
        out, err = first.communicate(timeout=120)
    assert second.returncode == 1, second.stdout
    line = one_line_error(second.stderr)
    assert f"out_text_document.lock: another run (pid {first.pid} on" in line
    assert first.returncode == 0, err
    assert outputs(tmp_path) == [f"out_text_document{s}" for s in (".bin", ".idx", ".meta.json")]
    documents = read_documents(str(tmp_path / "out_text_document"))  # the first run's, and all of them
    assert len(documents) == corpus.read_text(encoding="utf-8").count("\n")
    tokens = int(out.split("tokens ")[1].split("\n")[0].replace(",", ""))
    assert sum(len(doc) for doc, _ in documents) == tokens


def test_a_killed_runs_lock_file_is_taken_over_with_a_note(tmp_path):
    """A lock file that still names a holder (a run that ended without releasing it, here written by hand):
    the run takes it over and says whose it was, as the trainer does for --save."""
    corpus = write_jsonl(tmp_path / "c.jsonl", corpus_texts(20))
    lock = tmp_path / "out_text_document.lock"
    lock.write_text("123 on nodeZ\n")
    proc = subprocess.run(tool_command("--input", corpus, "--output-prefix", tmp_path / "out"),
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    note = f"note: {lock}: took over the lock of pid 123 on nodeZ, which has ended"
    assert note in proc.stderr.splitlines(), proc.stderr
    assert outputs(tmp_path) == [f"out_text_document{s}" for s in (".bin", ".idx", ".meta.json")]


def test_training_refuses_a_mismatched_pair(tmp_path):
    """Case 8, reader side: an .idx beside another run's .bin is refused when the dataset opens."""
    for name, n in (("a", 30), ("b", 50)):
        write_jsonl(tmp_path / f"{name}.jsonl", corpus_texts(n))
        args = ("--input", tmp_path / f"{name}.jsonl", "--output-prefix", tmp_path / name, "--seq-length", S)
        assert run_tool(*args) == 0
    mixed = tmp_path / "mixed_text_document"
    shutil.copy(tmp_path / "a_text_document.idx", f"{mixed}.idx")
    shutil.copy(tmp_path / "b_text_document.bin", f"{mixed}.bin")
    sizes = [os.path.getsize(tmp_path / f"{name}_text_document.bin") for name in "ba"]
    message = rf"mixed_text_document\.bin has {sizes[0]:,} bytes but .*_document\.idx describes {sizes[1]:,}"
    with pytest.raises(ValueError, match=message):
        AnchorPackedDataset(str(mixed), seq_length=S)
    with pytest.raises(ValueError, match=message):
        build_train_valid_test_datasets([str(mixed)], "1,0,0", S, 1, (4, 0, 0))


def test_no_documents_is_an_error(tmp_path, capsys):
    """Case 9: every record skipped (a key no record has), or too few tokens for one kept sample."""
    write_jsonl(tmp_path / "in.jsonl", corpus_texts(20))
    base = ("--input", tmp_path / "in.jsonl", "--output-prefix", tmp_path / "out")
    assert run_tool(*base, "--json-keys", "text", "body", "--skip-bad-records") == 1
    line = one_line_error(capsys.readouterr().err)
    assert f"--input {tmp_path / 'in.jsonl'}: no documents to write for key 'text'" in line
    assert "skipped: missing key: 20" in line
    assert run_tool(*base, "--seq-length", 100_000, "--partial-sample", "drop") == 1
    assert "do not fill one sample of --seq-length 100000" in one_line_error(capsys.readouterr().err)
    assert outputs(tmp_path) == []


def test_gzip_is_known_by_its_bytes_not_its_name(tmp_path):
    """Case 9: gzip data named .jsonl (and plain text named .gz) read as what they are."""
    write_jsonl(tmp_path / "in.jsonl", corpus_texts(30))
    data = (tmp_path / "in.jsonl").read_bytes()
    (tmp_path / "gzip.jsonl").write_bytes(gzip.compress(data))
    (tmp_path / "plain.jsonl.gz").write_bytes(data)
    written = []
    for name in ("in.jsonl", "gzip.jsonl", "plain.jsonl.gz"):
        prefix = tmp_path / name.split(".")[0]
        assert run_tool("--input", tmp_path / name, "--output-prefix", prefix, "--skip-bad-records") == 0
        written.append(
            [(tmp_path / f"{prefix.name}_text_document{s}").read_bytes() for s in (".bin", ".idx")]
        )
    assert written[0] == written[1] == written[2]
    assert len(read_documents(str(tmp_path / "gzip_text_document"))) == 30


def damaged_gzip(kind: str) -> bytes:
    """The corpus gzipped, then damaged: cut short, a flipped byte (CRC), or garbage in the deflate data."""
    data = gzip.compress("".join(f'{{"text": "{t}"}}\n' for t in corpus_texts(100)).encode())
    if kind == "truncated":
        return data[: len(data) // 2]
    middle = len(data) // 2
    if kind == "bit-flip":
        return data[:middle] + bytes([data[middle] ^ 1]) + data[middle + 1 :]
    return data[:20] + bytes(range(200)) + data[220:]


def corrupt_model(tmp_path) -> str:
    blob = open(sp_model(), "rb").read()
    (tmp_path / "bad.model").write_bytes(blob[:100] + b"\xff" * 64 + blob[164:])
    return str(tmp_path / "bad.model")


@pytest.mark.parametrize("kind", ["truncated", "bit-flip", "garbage"])
def test_damaged_gzip_is_one_line(tmp_path, capsys, kind):
    """Case 10: a corrupt or truncated .gz names the file."""
    (tmp_path / "in.jsonl.gz").write_bytes(damaged_gzip(kind))
    assert run_tool("--input", tmp_path / "in.jsonl.gz", "--output-prefix", tmp_path / "out") == 1
    line = one_line_error(capsys.readouterr().err)
    assert f"{tmp_path / 'in.jsonl.gz'}: corrupt or truncated gzip file" in line
    assert outputs(tmp_path) == []


def test_bad_tokenizers_are_one_line(tmp_path, capsys):
    """Case 10: a corrupt SentencePiece model, an empty HF directory, an HF directory without a vocabulary."""
    write_jsonl(tmp_path / "in.jsonl", corpus_texts(5))
    base = ["--input", str(tmp_path / "in.jsonl"), "--output-prefix", str(tmp_path / "out"), "--no-progress"]
    model = corrupt_model(tmp_path)
    (tmp_path / "empty_hf").mkdir()
    (tmp_path / "no_vocab").mkdir()
    (tmp_path / "no_vocab" / "tokenizer_config.json").write_text('{"tokenizer_class": "LlamaTokenizer"}')
    cases = [
        ("SentencePieceTokenizer", model, f"--tokenizer-model {model}: not a SentencePiece model"),
        ("HuggingFaceTokenizer", tmp_path / "empty_hf", "no Hugging Face tokenizer files in this directory"),
        ("HuggingFaceTokenizer", tmp_path / "no_vocab", "no vocabulary beyond the special tokens"),
    ]
    for kind, path, expected in cases:
        assert tool().main([*base, "--tokenizer-type", kind, "--tokenizer-model", str(path)]) == 1
        line = one_line_error(capsys.readouterr().err)
        assert expected in line and str(path) in line
    assert outputs(tmp_path) == []
    hf_tokenizer_dir(tmp_path / "good_hf", 300, with_bos=True)  # and a real one still loads
    assert tool().main([*base, "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model",
                        str(tmp_path / "good_hf")]) == 0  # fmt: skip


def test_read_only_output_directory_is_one_line(tmp_path, capsys):
    """Case 10: the output directory cannot be written: refused before any work, naming the file."""
    write_jsonl(tmp_path / "in.jsonl", corpus_texts(5))
    (tmp_path / "ro").mkdir()
    with read_only(tmp_path / "ro"):
        assert run_tool("--input", tmp_path / "in.jsonl", "--output-prefix", tmp_path / "ro" / "out") == 1
        line = one_line_error(capsys.readouterr().err)
    assert str(tmp_path / "ro" / "out_text_document") in line
    assert list((tmp_path / "ro").iterdir()) == []


def test_seq_length_zero_names_the_value(tmp_path, capsys):
    """Case 10: ``--seq-length 0 --pack best-fit`` is a bad value, not a missing flag."""
    write_jsonl(tmp_path / "in.jsonl", corpus_texts(5))
    args = ("--input", tmp_path / "in.jsonl", "--output-prefix", tmp_path / "out", "--pack", "best-fit")
    assert run_tool(*args, "--seq-length", 0) == 1
    assert one_line_error(capsys.readouterr().err) == "error: --seq-length must be positive, got 0"


def test_full_disk_is_one_line(tmp_path):
    """Case 10: the disk fills while writing (the file-size limit: the kernel fails the real write)."""
    write_jsonl(tmp_path / "in.jsonl", corpus_texts(200))
    command = tool_command("--input", tmp_path / "in.jsonl", "--output-prefix", tmp_path / "out")
    limit = file_size_limit(20_000)
    result = subprocess.run(command, capture_output=True, text=True, preexec_fn=limit, timeout=120)
    assert result.returncode == 1
    line = one_line_error(result.stderr)
    assert (
        "File too large" in line and str(tmp_path / "out_text_document.bin.") in line and "free there" in line
    )
    assert outputs(tmp_path) == []


def test_no_space_left_is_one_line(tmp_path):
    """Case 10: a real full filesystem (a 64 KB tmpfs in a private mount namespace): ENOSPC names the file."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode:
        pytest.skip(f"no private mount namespace here: {probe.stderr.decode().strip()}")
    write_jsonl(tmp_path / "in.jsonl", corpus_texts(200))
    (tmp_path / "small").mkdir()
    command = tool_command("--input", tmp_path / "in.jsonl", "--output-prefix", tmp_path / "small" / "out")
    script = 'mount -t tmpfs -o size=64k tmpfs "$1" && "${@:2}"; rc=$?; ls -A "$1"; exit $rc'
    result = subprocess.run(
        ["unshare", "-rm", "bash", "-c", script, "bash", str(tmp_path / "small"), *command],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout
    line = one_line_error(result.stderr)
    assert "No space left on device" in line and str(tmp_path / "small" / "out_text_document") in line
    assert result.stdout.strip() == ""  # ls of the full filesystem: the run removed its files
