import time
from pathlib import Path

import numpy as np
import pytest

from nao.data.errors import DatasetError
from nao.data.text import EOS, UNK, batchify, find_files, load_corpus, window_lengths, windows

SHARED_PTB = Path(__file__).resolve().parents[2] / "shared" / "data" / "ptb"


def write_corpus(folder: Path, names=("train.txt", "valid.txt", "test.txt")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    texts = [" the cat sat on the mat \n a dog <unk> ran \n", " the dog sat \n", " a zebra sat on the cat \n"]
    for name, text in zip(names, texts):
        (folder / name).write_text(text)
    return folder


def test_vocabulary_from_train_in_order_of_first_appearance(tmp_path):
    corpus = load_corpus("ptb", write_corpus(tmp_path))
    assert corpus.vocab.words[:7] == ("the", "cat", "sat", "on", "mat", EOS, "a")
    assert UNK in corpus.vocab.words and len(corpus.vocab) == 10
    words = corpus.vocab.words
    assert [words[i] for i in corpus.train[:7]] == ["the", "cat", "sat", "on", "the", "mat", EOS]
    assert words[corpus.valid[-1]] == EOS


def test_unknown_words_become_unk_instead_of_failing(tmp_path):
    corpus = load_corpus("ptb", write_corpus(tmp_path))
    assert corpus.vocab.words[corpus.test[1]] == UNK  # 'zebra' is not in train


def test_original_file_names_and_subfolders_are_found(tmp_path):
    write_corpus(tmp_path / "wikitext-2", ("wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens"))
    assert find_files("wikitext2", tmp_path)["valid"].name == "wiki.valid.tokens"
    write_corpus(tmp_path / "penn", ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"))
    assert find_files("ptb", tmp_path)["train"] == tmp_path / "penn" / "ptb.train.txt"


def test_missing_files_fail_fast_in_one_line_naming_them(tmp_path):
    start = time.perf_counter()
    with pytest.raises(DatasetError) as info:
        load_corpus("ptb", tmp_path)
    assert time.perf_counter() - start < 1
    assert "no token files under" in str(info.value) and "simple-examples" in str(info.value)
    write_corpus(tmp_path)
    (tmp_path / "test.txt").unlink()
    with pytest.raises(DatasetError, match="lacks test.txt") as info:
        load_corpus("ptb", tmp_path)
    assert "\n" not in str(info.value)


def test_binary_or_empty_files_are_named(tmp_path):
    write_corpus(tmp_path)
    (tmp_path / "valid.txt").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DatasetError, match="valid.txt is not UTF-8"):
        load_corpus("ptb", tmp_path)
    (tmp_path / "valid.txt").write_text("\n\n")
    with pytest.raises(DatasetError, match="valid.txt holds no words"):
        load_corpus("ptb", tmp_path)


def test_batchify_makes_contiguous_streams():
    streams = batchify(np.arange(103), 4)
    assert streams.shape == (4, 25)
    np.testing.assert_array_equal(streams[1], np.arange(25, 50))
    with pytest.raises(DatasetError, match="^DIR/train.txt holds 5 tokens, .* lower the batch size$"):
        batchify(np.arange(5), 4, source="DIR/train.txt")


def test_corpus_remembers_its_files(ptb_dir):
    corpus = load_corpus("ptb", ptb_dir)
    assert corpus.files == {s: str(ptb_dir / f"{s}.txt") for s in ("train", "valid", "test")}


def test_windows_cover_the_stream_once_with_next_word_targets():
    stream = batchify(np.arange(1000), 2)
    rng = np.random.default_rng(0)
    seen = []
    for window in windows(stream, 35, rng):
        assert window.inputs.shape[1] % 5 == 0 and window.inputs.shape[1] >= window.length
        valid = window.inputs[:, :window.length]
        np.testing.assert_array_equal(window.targets[:, :window.length], valid + 1)
        assert not window.inputs[:, window.length:].any()
        seen.append(valid[0])
    np.testing.assert_array_equal(np.concatenate(seen), np.arange(499))


def test_window_lengths_follow_awd_lstm():
    lengths = window_lengths(10**6, 35, np.random.default_rng(0))
    body = np.array(lengths[:-1])
    assert body.min() >= 5 and body.max() <= 55
    assert abs(np.median(body) - 35) <= 1
    assert 0.02 < np.mean(body < 25) < 0.1  # the bptt/2 windows, 5% of the time
    assert window_lengths(100, 35, None) == [35, 35, 29]
    same_seed = [window_lengths(100, 35, np.random.default_rng(3)) for _ in range(2)]
    assert same_seed[0] == same_seed[1]


@pytest.mark.skipif(not SHARED_PTB.is_dir(), reason="the real PTB copy in ../shared is not on this machine")
def test_real_ptb_has_the_standard_sizes():
    corpus = load_corpus("ptb", SHARED_PTB)
    assert len(corpus.vocab) == 10000
    assert (len(corpus.train), len(corpus.valid), len(corpus.test)) == (929589, 73760, 82430)
