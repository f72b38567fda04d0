"""tools/preprocess_data.py end to end: plain and packed outputs against independent references."""

from __future__ import annotations

import gzip
import json
import warnings

import numpy as np
import pytest
from anchor_data_helpers import corpus_texts, read_documents, run_tool, sp_encode, sp_model, write_jsonl

from megatron_anchor.data.packing import count_cut_documents, pack_best_fit, pack_greedy
from megatron_anchor.data.preprocess import PreprocessConfig, PreprocessError, run_preprocess

S = 256
ANCHOR = 1  # the SentencePiece model's BOS


def test_plain_matches_megatron_builder(tmp_path):
    """Plain mode writes the same bytes as megatron-core's IndexedDatasetBuilder fed sentencepiece's ids."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    texts = corpus_texts(60)
    write_jsonl(tmp_path / "in.jsonl", texts)
    assert (
        run_tool("--input", tmp_path / "in.jsonl", "--output-prefix", tmp_path / "out", "--append-eod") == 0
    )
    builder = IndexedDatasetBuilder(str(tmp_path / "ref.bin"), dtype=DType.optimal_dtype(600))
    for ids in sp_encode(texts):
        builder.add_document(np.array(ids + [2]), [len(ids) + 1])
    builder.finalize(str(tmp_path / "ref.idx"))
    for suffix in (".bin", ".idx"):
        assert (tmp_path / f"out_text_document{suffix}").read_bytes() == (
            tmp_path / f"ref{suffix}"
        ).read_bytes()


def packed_run(tmp_path, texts, *flags, name="packed"):
    write_jsonl(tmp_path / "in.jsonl", texts)
    prefix = tmp_path / name
    assert (
        run_tool("--input", tmp_path / "in.jsonl", "--output-prefix", prefix, "--seq-length", S, *flags) == 0
    )
    return read_documents(f"{prefix}_text_document")


def reported_cuts(summary: str) -> dict[str, int]:
    """The summary's "documents cut" line as {packer: count}."""
    parts = summary.split("documents cut: ")[1].splitlines()[0].split(", ")
    return {name: int(n.replace(",", "")) for name, n in (part.rsplit(" ", 1) for part in parts)}


def test_greedy_packing_keeps_every_token(tmp_path, capsys):
    texts = corpus_texts(50)
    docs = packed_run(tmp_path, texts)
    lengths = [len(ids) for ids in sp_encode(texts)]
    assert reported_cuts(capsys.readouterr().out) == {
        "greedy": count_cut_documents(pack_greedy(lengths, S), lengths),
        "best-fit": count_cut_documents(pack_best_fit(lengths, S), lengths),
    }
    for tokens, lengths in docs[:-1]:
        assert len(tokens) == S + 1 and tokens[0] == ANCHOR and lengths[0] == 1
    assert docs[-1][0][0] == ANCHOR and len(docs[-1][0]) <= S + 1  # the padded partial sample
    written = np.concatenate([tokens[1:] for tokens, _ in docs])
    assert written.tolist() == [t for ids in sp_encode(texts) for t in ids]


def test_best_fit_packing_follows_its_plan(tmp_path, capsys):
    """Each sample is the anchor then the pieces the packer planned over independently tokenized texts."""
    texts = corpus_texts(80)
    docs = packed_run(tmp_path, texts, "--pack", "best-fit")
    ids = sp_encode(texts)
    plan = list(pack_best_fit([len(x) for x in ids], S))
    assert len(docs) == len(plan)
    for (tokens, lengths), sample in zip(docs, plan):
        assert tokens.tolist() == [ANCHOR] + [t for doc, a, b in sample for t in ids[doc][a:b]]
        assert lengths.tolist() == [1] + [b - a for _, a, b in sample]
    cut = reported_cuts(capsys.readouterr().out)
    lengths = [len(x) for x in ids]
    assert cut["best-fit"] == count_cut_documents(plan, lengths)
    assert cut["greedy"] == count_cut_documents(pack_greedy(lengths, S), lengths) > cut["best-fit"]


def test_partial_sample_drop(tmp_path, capsys):
    texts = corpus_texts(30)
    total = sum(map(len, sp_encode(texts)))
    docs = packed_run(tmp_path, texts, "--partial-sample", "drop")
    assert len(docs) == total // S and all(len(tokens) == S + 1 for tokens, _ in docs)
    assert f"final partial sample: {total % S:,} tokens dropped" in capsys.readouterr().out


def test_output_independent_of_workers(tmp_path):
    write_jsonl(tmp_path / "in.jsonl", corpus_texts(120))
    outputs = []
    for workers in (1, 2):
        for pack in ("none", "best-fit"):
            config = PreprocessConfig(
                input=str(tmp_path / "in.jsonl"),
                output_prefix=str(tmp_path / f"w{workers}_{pack}"),
                tokenizer_type="SentencePieceTokenizer",
                tokenizer_model=sp_model(),
                workers=workers,
                seq_length=S if pack != "none" else None,
                pack=pack,
                chunk_bytes=20_000,  # many chunks, so both workers get some
                split_sentences=pack == "none",
                progress=False,
            )
            run_preprocess(config)
            level = "sentence" if pack == "none" else "document"
            outputs.append(
                [(tmp_path / f"w{workers}_{pack}_text_{level}{s}").read_bytes() for s in (".bin", ".idx")]
            )
    assert outputs[0] == outputs[2] and outputs[1] == outputs[3]


def test_split_sentences_and_inputs(tmp_path, capsys):
    """A directory of .jsonl and .jsonl.gz; sentences become sequences; punkt is trained offline if needed."""
    texts = corpus_texts(20)
    (tmp_path / "in").mkdir()
    write_jsonl(tmp_path / "in" / "a.jsonl", texts[:10])
    with gzip.open(tmp_path / "in" / "b.jsonl.gz", "wt", encoding="utf-8") as stream:
        stream.writelines(json.dumps({"text": t}) + "\n" for t in texts[10:])
    assert run_tool("--input", tmp_path / "in", "--output-prefix", tmp_path / "s", "--split-sentences") == 0
    docs = read_documents(str(tmp_path / "s_text_sentence"))
    assert len(docs) == 20
    assert all(len(lengths) > 1 for _, lengths in docs)  # every corpus document has several sentences
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_file=sp_model())
    for (tokens, _), text in zip(docs, texts):
        assert processor.decode(tokens.tolist()).replace(" ", "") == text.replace(" ", "").replace("\n", "")
    from megatron_anchor.data.sentences import installed_punkt_params

    said = capsys.readouterr().err.count("trained punkt parameters on the first")
    assert said == (0 if installed_punkt_params("english") is not None else 1)


BAD_LINES = {
    "malformed JSON": b'{"text": "unterminated\n',
    "missing key": b'{"body": "no text key"}\n',
    "non-string value": b'{"text": 42}\n',
    "invalid UTF-8": b'{"text": "bad \xff byte"}\n',
}


@pytest.mark.parametrize("kind", sorted(BAD_LINES))
def test_bad_record_stops_with_file_and_line(tmp_path, capsys, kind):
    path = tmp_path / "in.jsonl"
    good = [json.dumps({"text": t}).encode() + b"\n" for t in corpus_texts(3)]
    path.write_bytes(good[0] + good[1] + BAD_LINES[kind] + good[2])
    assert run_tool("--input", path, "--output-prefix", tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert f"{path}:3: {kind}" in err
    assert not list(tmp_path.glob("out*"))  # nothing written, not even temporary files
    assert run_tool("--input", path, "--output-prefix", tmp_path / "out", "--skip-bad-records") == 0
    out = capsys.readouterr().out
    assert f"skipped: {kind}: 1" in out and "documents 3," in out


def test_empty_texts_are_skipped_and_counted(tmp_path, capsys):
    write_jsonl(tmp_path / "in.jsonl", ["", corpus_texts(1)[0], "   ", corpus_texts(2)[1]])
    assert run_tool("--input", tmp_path / "in.jsonl", "--output-prefix", tmp_path / "out") == 0
    out = capsys.readouterr().out
    assert "empty texts (text): 2" in out and "documents 2," in out
    assert len(read_documents(str(tmp_path / "out_text_document"))) == 2


def test_token_id_too_large_for_dtype(tmp_path, capsys):
    from megatron_anchor.data.encode import to_token_dtype

    with pytest.raises(ValueError, match="70000 does not fit the output dtype uint16"):
        to_token_dtype(np.array([5, 70000]), np.uint16)
    write_jsonl(tmp_path / "in.jsonl", corpus_texts(2))
    args = ("--input", tmp_path / "in.jsonl", "--output-prefix", tmp_path / "out", "--seq-length", 64)
    assert run_tool(*args, "--anchor-token-id", 70000) == 1
    assert "--anchor-token-id 70000" in capsys.readouterr().err


def test_conflicting_pack_flags_are_errors(tmp_path, capsys):
    write_jsonl(tmp_path / "in.jsonl", corpus_texts(2))
    base = ("--input", tmp_path / "in.jsonl", "--output-prefix", tmp_path / "out")
    assert run_tool(*base, "--pack", "none", "--seq-length", 64) == 1
    assert "--pack none" in capsys.readouterr().err
    assert run_tool(*base, "--pack", "greedy") == 1
    assert "needs --seq-length" in capsys.readouterr().err


def test_failure_after_writing_started_leaves_nothing(tmp_path):
    lines = [json.dumps({"text": t}) + "\n" for t in corpus_texts(60)]
    (tmp_path / "in.jsonl").write_text("".join(lines) + "{broken\n", encoding="utf-8")
    config = PreprocessConfig(
        input=str(tmp_path / "in.jsonl"),
        output_prefix=str(tmp_path / "out"),
        tokenizer_type="SentencePieceTokenizer",
        tokenizer_model=sp_model(),
        seq_length=S,
        chunk_bytes=10_000,
        progress=False,
    )
    with pytest.raises(PreprocessError, match=r"in.jsonl:61: malformed JSON"):
        run_preprocess(config)
    assert not list(tmp_path.glob("out*"))


def test_killed_run_leaves_no_complete_looking_output(tmp_path):
    """SIGKILL while writing: only temporary names exist, never a .bin/.idx pair; the next run cleans up."""
    import os
    import signal
    import subprocess

    from anchor_data_helpers import big_corpus, tool_command, wait_for

    big_corpus(tmp_path / "in.jsonl")
    command = tool_command(
        "--input", tmp_path / "in.jsonl", "--output-prefix", tmp_path / "out", "--seq-length", 512
    )
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    temporaries = lambda: list(tmp_path.glob("out_text_document.bin.*tmp"))
    try:
        wait_for(lambda: any(path.stat().st_size for path in temporaries()), "the run to write")
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the tool and its pool workers
        process.wait()
    assert not (tmp_path / "out_text_document.bin").exists()
    assert not (tmp_path / "out_text_document.idx").exists()
    # The killed run's lock died with it: a new run to the prefix is not refused, and removes its temporaries.
    write_jsonl(tmp_path / "small.jsonl", corpus_texts(5))
    assert run_tool("--input", tmp_path / "small.jsonl", "--output-prefix", tmp_path / "out") == 0
    assert sorted(path.name for path in tmp_path.glob("out*")) == [
        "out_text_document.bin",
        "out_text_document.idx",
        "out_text_document.meta.json",
    ]


def test_several_json_keys_packed(tmp_path):
    """One packed output per key, each holding exactly that key's tokens."""
    texts = corpus_texts(40)
    titles = [t.split(".")[0] for t in texts]
    with open(tmp_path / "in.jsonl", "w", encoding="utf-8") as stream:
        stream.writelines(json.dumps({"text": t, "title": h}) + "\n" for t, h in zip(texts, titles))
    args = ("--input", tmp_path / "in.jsonl", "--output-prefix", tmp_path / "k", "--seq-length", 64)
    assert run_tool(*args, "--json-keys", "text", "title", "--pack", "best-fit") == 0
    for key, key_texts in (("text", texts), ("title", titles)):
        docs = read_documents(str(tmp_path / f"k_{key}_document"))
        written = sorted(t for tokens, _ in docs for t in tokens[1:].tolist())
        assert written == sorted(t for ids in sp_encode(key_texts) for t in ids)


def test_sentences_with_eod(tmp_path):
    texts = corpus_texts(10)
    write_jsonl(tmp_path / "in.jsonl", texts)
    args = (
        "--input",
        tmp_path / "in.jsonl",
        "--output-prefix",
        tmp_path / "e",
        "--split-sentences",
        "--append-eod",
    )
    assert run_tool(*args) == 0
    for tokens, lengths in read_documents(str(tmp_path / "e_text_sentence")):
        assert tokens[-1] == 2 and (tokens[:-1] != 2).all() and lengths.sum() == len(tokens)


def test_huggingface_tokenizer_directory(tmp_path):
    from anchor_data_helpers import hf_tokenizer_dir, tool

    backend = hf_tokenizer_dir(tmp_path / "hf", 300, with_bos=True)
    texts = corpus_texts(15)
    write_jsonl(tmp_path / "in.jsonl", texts)
    argv = ["--input", str(tmp_path / "in.jsonl"), "--output-prefix", str(tmp_path / "h"), "--seq-length",
            "100", "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", str(tmp_path / "hf"),
            "--no-progress", "--workers", "2"]  # fmt: skip
    assert tool().main(argv) == 0
    docs = read_documents(str(tmp_path / "h_text_document"))
    assert all(tokens[0] == 1 for tokens, _ in docs)  # <s> is the anchor
    written = np.concatenate([tokens[1:] for tokens, _ in docs]).tolist()
    assert written == [t for text in texts for t in backend.encode(text).ids]
