"""MSVD: the corpus files as they ship, the vidN split, and extraction of a
miniature MSVD-shaped tree (encoded here) into features with references and a
vocabulary."""

import json
import os

import numpy as np
import pytest

from grurcn_jax.data import captions, extract, features, msvd, pipeline
from grurcn_jax.errors import ConfigError, SplitFileError
from tests.data.fake import encode_video
from tests.data.test_extract import parsed

# Clip names as MSVD writes them (YouTube id, start and end second); the mapping's
# order is not the alphabetical one, and a leading '-' is part of a name.
CLIPS = ["mv89psg6zh4_33_46", "-4wsuPCjDBc_5_15", "zv2RIbUsnSw_335_341",
         "9Q0JfdP36kI_23_28", "bQJQGoJF7_k_162_169"]
HEADER = ("###########################\n# Microsoft Research Video Description "
          "Corpus\n# <clip> <description>\n###########################\n")
CAPTIONS = {
    CLIPS[0]: ["A bird is bathing in a sink.", "a bird splashes in the water"],
    CLIPS[1]: ["A squirrel is eating a peanut.", "a squirrel eats"],
    CLIPS[2]: ["A man is playing a guitar."],
    CLIPS[3]: ["A woman is slicing an onion.", "someone cuts an onion"],
    CLIPS[4]: ["A cat is playing with a ball."],
}


def write_corpus(root, clips=CLIPS, captions_of=CAPTIONS, extra=""):
  (root / "mapping.txt").write_text("".join(f"{c} vid{i + 1}\n" for i, c in enumerate(clips)))
  (root / "descriptions.txt").write_text(
      HEADER + "".join(f"{c} {t}\n" for c, ts in captions_of.items() for t in ts) + extra)
  return str(root / "descriptions.txt"), str(root / "mapping.txt")


@pytest.fixture(scope="module")
def msvd_tree(tmp_path_factory):
  root = tmp_path_factory.mktemp("msvd")
  videos = root / "YouTubeClips"
  videos.mkdir()
  for i, clip in enumerate(CLIPS):
    encode_video(str(videos / f"{clip}.avi"), num_frames=4 + i, seed=i)
  # A clip of the corpus that is not in the mapping: left out.
  descriptions, mapping = write_corpus(root, extra="notInMapping_1_2 a dog runs\n")
  return str(videos), descriptions, mapping


def test_entries_follow_the_vid_order_and_split_by_it(msvd_tree):
  videos, descriptions, mapping = msvd_tree
  entries, references = msvd.msvd_entries(videos, descriptions, mapping, (2, 1, 2))
  assert [e.video_id for e in entries] == CLIPS
  assert [e.split for e in entries] == ["train", "train", "val", "test", "test"]
  assert {e.label for e in entries} == {-1}
  assert entries[1].path == os.path.join(videos, "-4wsuPCjDBc_5_15.avi")
  assert references == CAPTIONS          # header skipped, the extra clip left out
  assert msvd.read_mapping(mapping)["zv2RIbUsnSw_335_341"] == 3


def test_clips_whose_names_differ_in_case_get_their_own_files(tmp_path):
  # YouTube ids tell case apart; a name that differs in case only (an upper-case
  # extension, a case-folding copy) is found when it is the only such file.
  clips = ["abC_1_2", "ABc_1_2", "xY_3_4", "Zz_5_6"]
  videos = tmp_path / "videos"
  videos.mkdir()
  for name in ("abC_1_2.avi", "ABc_1_2.avi", "xy_3_4.avi", "Zz_5_6.AVI"):
    (videos / name).write_bytes(b"")
  descriptions, mapping = write_corpus(tmp_path, clips, {c: ["a cat"] for c in clips})
  entries, _ = msvd.msvd_entries(str(videos), descriptions, mapping, (2, 1, 1))
  assert [os.path.basename(e.path) for e in entries] == [
      "abC_1_2.avi", "ABc_1_2.avi", "xy_3_4.avi", "Zz_5_6.AVI"]
  # Two files that differ in case only, neither of them exact: no guess.
  (videos / "XY_3_4.avi").write_bytes(b"")
  with pytest.raises(SplitFileError, match="1 clip.* no video file in .*: xY_3_4"):
    msvd.msvd_entries(str(videos), descriptions, mapping, (2, 1, 1))


def test_corpus_problems_are_errors_that_name_the_file_and_the_clip(msvd_tree, tmp_path):
  videos, descriptions, mapping = msvd_tree
  with pytest.raises(SplitFileError, match=r"add up to 4"):
    msvd.msvd_entries(videos, descriptions, mapping, (2, 1, 1))
  bad = tmp_path / "bad"
  bad.mkdir()
  (bad / "m.txt").write_text(f"{CLIPS[0]} vid1\n{CLIPS[1]} 2\n")
  with pytest.raises(SplitFileError, match=r"m.txt:2: malformed line"):
    msvd.read_mapping(str(bad / "m.txt"))
  (bad / "m.txt").write_text(f"{CLIPS[0]} vid1\n{CLIPS[1]} vid1\n")
  with pytest.raises(SplitFileError, match=r"vid1 appears twice"):
    msvd.read_mapping(str(bad / "m.txt"))
  # A clip of the mapping with no video file, one with no caption.
  extra = CLIPS + ["abcdefghijk_1_2"]
  _, mapping_plus = write_corpus(bad, clips=extra)
  with pytest.raises(SplitFileError, match=r"1 clip\(s\) of the mapping have no video "
                                           r"file in .*: abcdefghijk_1_2"):
    msvd.msvd_entries(videos, descriptions, mapping_plus, (3, 1, 2))
  no_caption = dict(CAPTIONS)
  del no_caption[CLIPS[2]]
  descriptions_minus, _ = write_corpus(bad, captions_of=no_caption)
  with pytest.raises(SplitFileError, match=rf"have no caption in .*: {CLIPS[2]}"):
    msvd.msvd_entries(videos, descriptions_minus, mapping, (2, 1, 2))
  with pytest.raises(SplitFileError, match="missing file"):
    msvd.msvd_entries(videos, str(bad / "none.txt"), mapping, (2, 1, 2))


def test_extraction_writes_features_references_split_and_vocabulary(msvd_tree, tmp_path,
                                                                   capsys):
  videos, descriptions, mapping = msvd_tree
  out = str(tmp_path / "feats")
  with pytest.raises(ConfigError, match="--captions and --mapping are required with "
                                           "--source=msvd"):
    extract._check_required_flags(parsed("--source=msvd", f"--videos={videos}",
                                         f"--out={out}"))
  # The command's run, in-process (tests/data/test_extract.py runs the program).
  extract.run(parsed(
      "--source=msvd", f"--videos={videos}", f"--captions={descriptions}",
      f"--mapping={mapping}", "--msvd_split=2,1,2", "--min_word_count=2",
      "--levels=pool2", "--image_size=32", "--videos_per_shard=2", "--batch_size=8",
      f"--out={out}"))
  stdout = capsys.readouterr().out
  metadata = features.read_metadata(out)
  assert metadata["extraction"]["source"] == "msvd" and metadata["class_names"] == []
  by_split = {split: sorted(v.video_id for v in features.read_videos(out, split))
              for split in ("train", "val", "test")}
  assert by_split == {"train": sorted(CLIPS[:2]), "val": [CLIPS[2]],
                      "test": sorted(CLIPS[3:])}
  clip = next(v for v in features.read_videos(out, "test") if v.video_id == CLIPS[4])
  assert clip.num_frames == 8 and clip.label == -1
  assert clip.features["pool2"].shape == (8, 8, 8, 128)

  references, vocabulary = captions.read_captions(out)
  assert references == CAPTIONS
  # Words of the two training clips' four references seen at least twice: the
  # test clips' words ("onion", "cat") are not in it.
  assert vocabulary.words[len(captions.RESERVED):] == ("a", "bird", "in", "is",
                                                       "squirrel")
  assert json.load(open(os.path.join(out, "captions.json")))["min_count"] == 2
  assert "a vocabulary of 9 words (min count 2)" in stdout

  # The captioning pipeline reads the test split with its references' words.
  data = {"dir": out, "eval_split": "test", "clip_length": 2, "frame_stride": 1,
          "skip_bad_records": False}
  batch = next(iter(pipeline.caption_eval_batches(data, segments=2, batch_size=2)))
  assert batch["features"]["pool2"].shape == (2, 2, 2, 8, 8, 128)
  ids = features.video_ids(metadata, "test")
  assert sorted(ids[int(i)] for i in batch["video_index"]) == sorted(CLIPS[3:])
  assert np.all(batch["mask"] == 1)


def test_a_byte_order_mark_is_read_as_none_and_bad_bytes_are_dropped_with_a_warning(
    tmp_path, caplog):
  from grurcn_jax.data import captions, msvd
  mapping = tmp_path / "mapping.txt"
  mapping.write_bytes("\ufeffclip_a vid1\nclip_b vid2\n".encode("utf-8"))
  assert msvd.read_mapping(str(mapping)) == {"clip_a": 1, "clip_b": 2}
  descriptions = tmp_path / "descriptions.txt"
  descriptions.write_bytes(b"clip_a a caf\xe9 scene\nclip_a a dog runs\n")
  with caplog.at_level("WARNING"):
    references = msvd.read_descriptions(str(descriptions))
  assert "1 line(s) hold bytes that are not UTF-8" in caplog.text
  assert "line 1" in caplog.text
  vocabulary = captions.build_vocabulary(references["clip_a"])
  assert "caf" in vocabulary.words and "\ufffd" not in vocabulary.words
