"""Captions stored with a feature directory, and the vocabulary built from them.

`captions.json` beside `metadata.json` holds every video's reference captions (by
video id) and the vocabulary: the words of the training references seen at least
`min_count` times, most frequent first, after the four reserved tokens. Captions
are tokenised as the metrics tokenise them (`caption_metrics.simple_tokenize`:
lower case, punctuation dropped), so what the model learns to write is what is
scored.
"""

import collections
import dataclasses
from typing import Dict, Iterable, List, Mapping, Sequence, Tuple

import numpy as np

from grurcn_jax.caption_metrics import simple_tokenize
from grurcn_jax.data import features as features_lib
from grurcn_jax.errors import FeatureFormatError

CAPTIONS_FILE = "captions.json"
PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
RESERVED = (PAD, BOS, EOS, UNK)


@dataclasses.dataclass(frozen=True)
class Vocabulary:
  """Word <-> id; ids 0-3 are <pad>, <bos>, <eos>, <unk>."""
  words: Sequence[str]

  def __post_init__(self):
    if tuple(self.words[:len(RESERVED)]) != RESERVED:
      raise FeatureFormatError(f"a vocabulary starts with {RESERVED}")
    object.__setattr__(self, "_ids", {w: i for i, w in enumerate(self.words)})

  @property
  def size(self) -> int:
    return len(self.words)

  @property
  def bos(self) -> int:
    return RESERVED.index(BOS)

  @property
  def eos(self) -> int:
    return RESERVED.index(EOS)

  def never_generated(self, allow_unk: bool = False) -> Tuple[int, ...]:
    """Ids a generated caption never holds: <pad> and <bos>, and <unk> (a rare
    word's stand-in, which matches no reference word) unless `allow_unk`."""
    banned = (PAD, BOS) if allow_unk else (PAD, BOS, UNK)
    return tuple(self._ids[w] for w in banned)

  def encode(self, caption: str, max_length: int) -> np.ndarray:
    """[max_length] int32: the caption's word ids, at most max_length - 1 of them,
    then <eos>, then <pad> (0)."""
    unknown = self._ids[UNK]
    ids = [self._ids.get(w, unknown) for w in simple_tokenize(caption).split()]
    ids = ids[:max_length - 1] + [self.eos]
    return np.array(ids + [0] * (max_length - len(ids)), np.int32)

  def decode(self, ids: Iterable[int]) -> str:
    """Words up to the first <eos> (reserved tokens other than <unk> left out)."""
    words = []
    for i in ids:
      if int(i) == self.eos:
        break
      word = self.words[int(i)]
      if word not in (PAD, BOS):
        words.append(word)
    return " ".join(words)


def build_vocabulary(captions: Iterable[str], min_count: int = 1) -> Vocabulary:
  """The words of `captions` seen at least `min_count` times, most frequent first
  (ties in alphabetical order, so the same captions give the same ids)."""
  counts = collections.Counter(w for c in captions for w in simple_tokenize(c).split())
  kept = sorted((w for w, n in counts.items() if n >= min_count),
                key=lambda w: (-counts[w], w))
  return Vocabulary(RESERVED + tuple(w for w in kept if w not in RESERVED))


def write_captions(directory: str, references: Mapping[str, Sequence[str]],
                   train_ids: Iterable[str], min_count: int = 1) -> Vocabulary:
  """Writes `captions.json` (every video's references and the vocabulary of the
  training videos' references) into the feature directory; returns the
  vocabulary."""
  train_ids = list(train_ids)
  missing = [v for v in train_ids if v not in references]
  if missing:
    raise FeatureFormatError(f"no reference captions for training video(s) "
                             f"{missing[:5]}")
  vocabulary = build_vocabulary((c for v in train_ids for c in references[v]),
                                min_count)
  document = {"references": {v: list(c) for v, c in references.items()},
              "vocabulary": list(vocabulary.words), "min_count": min_count}
  features_lib.write_json(features_lib.join(directory, CAPTIONS_FILE), document)
  return vocabulary


def read_captions(directory: str) -> tuple:
  """(references: video id -> captions, Vocabulary) of a feature directory."""
  path = features_lib.join(directory, CAPTIONS_FILE)
  document = features_lib.read_json(path, f"no captions at {path}: extract with "
                                          "captions (--captions) first")
  return ({v: list(c) for v, c in document["references"].items()},
          Vocabulary(tuple(document["vocabulary"])))


def references_by_id(references: Mapping[str, List[str]],
                     video_ids: Iterable[str]) -> Dict[str, List[str]]:
  """The references of `video_ids`; a video without any is an error."""
  out = {}
  for v in video_ids:
    if not references.get(v):
      raise FeatureFormatError(f"video {v!r} has no reference captions")
    out[v] = references[v]
  return out


# -- the references of a split, aligned with its videos --------------------------

@dataclasses.dataclass(frozen=True)
class CaptionTable:
  """A split's captions as word ids, aligned with a reader's videos: video row v
  has the captions tokens[first[v] : first[v] + count[v]] ([N, max_length] int32:
  words, <eos>, then <pad> 0)."""
  tokens: np.ndarray
  first: np.ndarray
  count: np.ndarray


def caption_table(video_indices: Sequence[int], video_ids: Mapping[int, str],
                  references: Mapping[str, Sequence[str]], vocabulary,
                  max_length: int) -> CaptionTable:
  """The CaptionTable of the videos `video_indices` (a reader's order); a video
  without references is a FeatureFormatError."""
  tokens, first, count = [], [], []
  for index in video_indices:
    video_id = video_ids.get(int(index), str(index))
    captions = references.get(video_id)
    if not captions:
      raise FeatureFormatError(f"video {video_id!r} has no reference captions")
    first.append(len(tokens))
    count.append(len(captions))
    tokens.extend(vocabulary.encode(c, max_length) for c in captions)
  return CaptionTable(np.stack(tokens).astype(np.int32), np.array(first, np.int64),
                      np.array(count, np.int64))


def split_caption_table(reader, directory: str, split: str,
                        references: Mapping[str, Sequence[str]], vocabulary: Vocabulary,
                        max_length: int) -> CaptionTable:
  """The CaptionTable of a ClipReader's videos of `split`."""
  metadata = features_lib.read_metadata(directory)
  return caption_table(reader.videos["video_index"],
                       features_lib.video_ids(metadata, split), references,
                       vocabulary, max_length)
