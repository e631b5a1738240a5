"""Captions beside the features: the vocabulary of the training references only,
encoding and decoding, the file's round trip."""

import numpy as np
import pytest

from grurcn_jax.data import captions
from grurcn_jax.errors import FeatureFormatError

REFERENCES = {
    "train/a": ["A red square moves left.", "the red square goes left"],
    "train/b": ["A blue disc grows!", "the disc grows, then stops"],
    "test/c": ["A green diamond spins."],        # 'green', 'spins': test words only
}


def test_vocabulary_is_the_training_words_by_frequency():
  vocab = captions.build_vocabulary(
      [c for v in ("train/a", "train/b") for c in REFERENCES[v]], min_count=1)
  assert vocab.words[:4] == captions.RESERVED
  # The words seen twice, alphabetically, then those seen once.
  twice = ("a", "disc", "grows", "left", "red", "square", "the")
  assert vocab.words[4:] == twice + ("blue", "goes", "moves", "stops", "then")
  assert "green" not in vocab.words
  common = captions.build_vocabulary(
      [c for v in ("train/a", "train/b") for c in REFERENCES[v]], min_count=2)
  assert common.words[4:] == ("a", "disc", "grows", "left", "red", "square", "the")


def test_encode_pads_ends_and_truncates_and_decode_inverts():
  vocab = captions.build_vocabulary(REFERENCES["train/a"])
  ids = vocab.encode("The red square moves, LEFT!", max_length=8)
  assert ids.dtype == np.int32 and ids.shape == (8,)
  assert list(ids[5:]) == [vocab.eos, 0, 0]
  assert vocab.decode(ids) == "the red square moves left"
  unknown = vocab.encode("a purple square", max_length=5)
  assert vocab.decode(unknown) == "a <unk> square"
  short = vocab.encode("the red square moves left", max_length=3)
  assert list(short) == [*vocab.encode("the red", 3)[:2], vocab.eos]


def test_the_file_holds_every_reference_and_the_training_vocabulary(tmp_path):
  vocab = captions.write_captions(str(tmp_path), REFERENCES, ["train/a", "train/b"])
  references, read = captions.read_captions(str(tmp_path))
  assert references == REFERENCES and read == vocab
  assert "spins" not in read.words
  with pytest.raises(FeatureFormatError, match="no reference captions for training"):
    captions.write_captions(str(tmp_path), REFERENCES, ["train/x"])
  with pytest.raises(FeatureFormatError, match="no captions at"):
    captions.read_captions(str(tmp_path / "none"))
  with pytest.raises(FeatureFormatError, match="has no reference captions"):
    captions.references_by_id({"v": []}, ["v"])
