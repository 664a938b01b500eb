"""Word-level language-modelling corpora: Penn Treebank and WikiText-2 token files.

The standard files hold one sentence (PTB) or one paragraph (WikiText-2) a line,
tokens separated by spaces, ``<unk>`` already in place. As every LM code base
since Zaremba et al. does, an ``<eos>`` ends each line and the vocabulary is
built from the training file in order of first appearance. Words of the valid
and test files missing from it become ``<unk>``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from nao.data.errors import DatasetError

EOS, UNK = "<eos>", "<unk>"
SPLITS = ("train", "valid", "test")
# Accepted names per split: the renamed copies (AWD-LSTM, DARTS) first, then the originals.
FILE_NAMES = {
    "ptb": {s: (f"{s}.txt", f"ptb.{s}.txt") for s in SPLITS},
    "wikitext2": {s: (f"{s}.txt", f"wiki.{s}.tokens") for s in SPLITS},
}
SUBDIRS = {"ptb": ("", "penn", "ptb", "data"), "wikitext2": ("", "wikitext-2", "wikitext2")}
SOURCES = {
    "ptb": "ptb.{train,valid,test}.txt of http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz",
    "wikitext2": "wiki.{train,valid,test}.tokens of wikitext-2-v1.zip (Merity et al.)",
}


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    words: tuple[str, ...]

    def __post_init__(self):
        object.__setattr__(self, "_index", {w: i for i, w in enumerate(self.words)})

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, words: list[str]) -> np.ndarray:
        unk = self._index[UNK]
        return np.fromiter((self._index.get(w, unk) for w in words), np.int32, len(words))

    @property
    def fingerprint(self) -> str:
        """Identifies the vocabulary (checkpoints refuse another one without --mode=transfer)."""
        return hashlib.sha256("\n".join(self.words).encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Corpus:
    name: str
    vocab: Vocabulary
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    files: dict[str, str] = dataclasses.field(default_factory=dict)  # split -> the file it was read from


def _read_words(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}): "
                           "replace it with the original token file") from None
    words = []
    for line in text.splitlines():
        tokens = line.split()
        if tokens:
            words += tokens + [EOS]
    if not words:
        raise DatasetError(f"{path} holds no words: replace it with the original token file")
    return words


def find_files(dataset: str, data_dir: str | os.PathLike, splits: tuple[str, ...] = SPLITS
               ) -> dict[str, Path]:
    """The files of ``splits`` (train, valid, test) of ``dataset`` under ``data_dir``; a one-line error if
    any is missing."""
    if dataset not in FILE_NAMES:
        raise ValueError(f"unknown text dataset {dataset!r}: choose one of {', '.join(FILE_NAMES)}")
    root = Path(data_dir).expanduser()
    for sub in SUBDIRS[dataset]:
        folder = root / sub
        found = {s: next((folder / n for n in FILE_NAMES[dataset][s] if (folder / n).is_file()), None)
                 for s in splits}
        if all(found.values()):
            return found
        if any(found.values()):
            missing = [FILE_NAMES[dataset][s][0] for s in splits if found[s] is None]
            raise DatasetError(f"{dataset}: {folder} lacks {', '.join(missing)}: put {SOURCES[dataset]} "
                               f"there (as train.txt, valid.txt, test.txt or their original names)")
    raise DatasetError(f"{dataset}: no token files under {root}: put {SOURCES[dataset]} in that folder "
                       f"(as train.txt, valid.txt, test.txt or their original names) and pass --data_dir")


def load_corpus(dataset: str, data_dir: str | os.PathLike, splits: tuple[str, ...] = SPLITS) -> Corpus:
    """Read and numericalise ``splits`` (train among them; those not read are empty); the vocabulary
    comes from the training file. A search reads no test file: ``splits=("train", "valid")``."""
    files = find_files(dataset, data_dir, splits)
    words = {s: _read_words(p) for s, p in files.items()}
    vocab_words = list(dict.fromkeys(words["train"]))
    if UNK not in vocab_words:
        vocab_words.append(UNK)
    vocab = Vocabulary(tuple(vocab_words))
    return Corpus(dataset, vocab, *(vocab.encode(words[s]) if s in words else np.zeros(0, np.int32)
                                    for s in SPLITS),
                  files={s: str(p) for s, p in files.items()})


def batchify(ids: np.ndarray, batch_size: int, source: str = "the token stream") -> np.ndarray:
    """(batch_size, T): ``batch_size`` contiguous streams; the remainder that does not fit is dropped.
    ``source`` (the file the ids came from) names the culprit when they are too few."""
    steps = len(ids) // batch_size
    if steps < 2:
        raise DatasetError(f"{source} holds {len(ids)} tokens, too few for {batch_size} streams of 2 or "
                           "more: use the whole token file, or lower the batch size")
    return ids[:steps * batch_size].reshape(batch_size, steps)


@dataclasses.dataclass(frozen=True)
class Window:
    """One truncated-BPTT window, padded to a bucketed length so few shapes ever compile."""

    inputs: np.ndarray  # (B, padded) int32
    targets: np.ndarray  # (B, padded) int32
    length: int  # real steps; the rest is padding

    @property
    def mask(self) -> np.ndarray:
        return np.arange(self.inputs.shape[1]) < self.length


def window_lengths(total: int, bptt: int, rng: np.random.Generator | None) -> list[int]:
    """AWD-LSTM's lengths: bptt (or bptt/2 with probability 0.05) plus N(0, 5) noise, in [5, bptt+20].

    ``rng=None`` gives fixed ``bptt`` windows (evaluation).
    """
    lengths, position = [], 0
    while position < total - 1:
        if rng is None:
            length = bptt
        else:
            mean = bptt if rng.random() < 0.95 else bptt / 2
            length = int(np.clip(round(rng.normal(mean, 5)), 5, bptt + 20))
        length = min(length, total - 1 - position)
        lengths.append(length)
        position += length
    return lengths


def windows(stream: np.ndarray, bptt: int, rng: np.random.Generator | None = None,
            bucket: int = 5) -> Iterator[Window]:
    """The (inputs, next-word targets) windows over a batchified (B, T) stream, in order."""
    position = 0
    for length in window_lengths(stream.shape[1], bptt, rng):
        padded = -(-length // bucket) * bucket
        inputs = np.zeros((stream.shape[0], padded), np.int32)
        targets = np.zeros_like(inputs)
        inputs[:, :length] = stream[:, position:position + length]
        targets[:, :length] = stream[:, position + 1:position + 1 + length]
        yield Window(inputs, targets, length)
        position += length
