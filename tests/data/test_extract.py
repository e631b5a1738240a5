"""Extraction end to end on a tiny UCF-101-style tree encoded here with PyAV."""

import copy
import dataclasses
import io
import os
import re
import subprocess
import sys

from absl import flags
import numpy as np
import pytest

from grurcn_jax.data import demo, extract, features, ucf101, video as video_lib
from grurcn_jax.errors import (ConfigError, ExtractionError, FeatureFormatError,
                               SplitFileError, VideoDecodeError)
from tests.data.fake import encode_video

CLASSES = ["JumpRope", "Rowing"]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def ucf_tree(tmp_path_factory):
  root = tmp_path_factory.mktemp("ucf")
  videos, splits = root / "videos", root / "splits"
  splits.mkdir()
  train, test = [], []
  for c, name in enumerate(CLASSES):
    (videos / name).mkdir(parents=True)
    for g in range(3):
      rel = f"{name}/v_{name}_g{g + 1:02d}_c01.avi"
      encode_video(str(videos / rel), num_frames=6 + g, seed=10 * c + g)
      (test if g == 2 else train).append(rel)
  garbage = f"{CLASSES[0]}/v_{CLASSES[0]}_g09_c01.avi"
  (videos / garbage).write_bytes(b"this is not a video" * 50)
  train.append(garbage)
  (splits / "classInd.txt").write_text("".join(f"{i + 1} {n}\n" for i, n in enumerate(CLASSES)))
  (splits / "trainlist01.txt").write_text("".join(f"{v} {CLASSES.index(v.split('/')[0]) + 1}\n"
                                                  for v in train))
  (splits / "testlist01.txt").write_text("".join(f"{v}\n" for v in test))
  return str(videos), str(splits)


def run_extract(*args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "grurcn_jax.data.extract", *args],
                        capture_output=True, text=True, cwd=REPO, env=env, timeout=600)


COMMON = ["--source=ucf101", "--split=1", "--levels=pool2,pool5", "--image_size=32",
          "--frame_stride=2", "--videos_per_shard=2", "--batch_size=8"]


@pytest.mark.long
def test_extraction_counts_shapes_resume_and_estimate(ucf_tree, tmp_path, capsys):
  videos, splits = ucf_tree
  out = str(tmp_path / "feats")
  args = COMMON + [f"--videos={videos}", f"--splits={splits}", f"--out={out}"]

  # The dry run in-process (it reads container metadata only); the run as a program.
  extract.run(parsed(*args, "--dry_run"))
  dry = capsys.readouterr().out
  assert "Estimated output for 7 videos" in dry and "pool2" in dry
  assert not os.path.exists(out)

  first = run_extract(*args)
  assert first.returncode == 0, first.stderr
  assert "1 video(s) could not be decoded and were skipped" in first.stdout
  assert "v_JumpRope_g09_c01.avi" in first.stdout

  metadata = features.read_metadata(out)
  assert metadata["class_names"] == CLASSES
  assert metadata["splits"]["train"]["num_videos"] == 4
  assert metadata["splits"]["test"]["num_videos"] == 2
  assert [f["video_id"] for f in metadata["splits"]["train"]["failed"]] == [
      "JumpRope/v_JumpRope_g09_c01.avi"]
  seen = {}
  for split in ("train", "test"):
    for v in features.read_videos(out, split):
      seen[v.video_id] = v
      assert v.features["pool2"].shape == (v.num_frames, 8, 8, 128)
      assert v.features["pool5"].shape == (v.num_frames, 1, 1, 512)
      assert np.all(np.isfinite(v.features["pool2"].astype(np.float32)))
  # Videos of 6, 7, 8 frames at stride 2 keep 3, 4, 4 frames.
  assert {k: v.num_frames for k, v in seen.items()} == {
      f"{c}/v_{c}_g{g:02d}_c01.avi": n for c in CLASSES for g, n in ((1, 3), (2, 4), (3, 4))}
  assert {v.label for k, v in seen.items() if k.startswith("Rowing")} == {1}

  # The dry-run estimate is within 10% of what was written.
  settings = extract.Settings(levels=("pool2", "pool5"), image_size=32, frame_stride=2)
  _, entries = ucf101.ucf101_entries(videos, splits, 1)
  estimate = extract.estimate_bytes(extract._file_videos(entries, settings), settings)
  written = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out)
                if f != "metadata.json")
  assert abs(estimate["total"] - written) <= 0.1 * written, (estimate, written)

  # Re-running skips what is written (in-process, with the same checks:
  # test_resume_records_a_shard_the_metadata_missed_exactly_once); other settings
  # into the same --out: test_library_errors_are_errors_not_exits (the error),
  # test_bad_flags_exit_1_with_one_line_and_no_traceback (its printing).


def test_missing_split_file_is_a_clear_error(ucf_tree, tmp_path):
  from grurcn_jax.errors import SplitFileError
  videos, splits = ucf_tree
  with pytest.raises(SplitFileError, match=r"^missing split file: .*trainlist02.txt"):
    extract.run(parsed(*COMMON, f"--videos={videos}", f"--splits={splits}", "--split=2",
                       f"--out={tmp_path / 'x'}"))
  assert not os.path.exists(tmp_path / "x")


def parsed(*args):
  """The extraction command's flags, parsed in their own FlagValues."""
  values = flags.FlagValues()
  extract.define_flags(values)
  values(["extract", *args])
  return values


def test_bad_flags_exit_1_with_one_line_and_no_traceback(ucf_tree, tmp_path):
  videos, splits = ucf_tree
  paths = [f"--videos={videos}", f"--splits={splits}", f"--out={tmp_path / 'x'}"]
  # A user's error, as the program prints it: one line, status 1.
  unknown = run_extract(*COMMON, *paths, "--levels=pool2,pool9")
  assert unknown.returncode == 1
  assert unknown.stderr.startswith("error: --levels: unknown level 'pool9'; valid: pool2")
  assert "Traceback" not in unknown.stderr
  assert not os.path.exists(tmp_path / "x")
  # The other checks raise those errors in-process (main prints any of them as
  # above).
  with pytest.raises(ConfigError, match="--out is required"):
    extract._check_required_flags(parsed(*COMMON, *paths[:2]))
  for extra, message in (
      (["--frames_jpeg_quality=90"], "--frames_jpeg_quality sets how --store_frames"),
      (["--source=flow_frames"], "--source=flow_frames imports flow: give --modality=flow"),
      (["--modality=flow", "--fps=5"], "--fps with --modality=flow"),
      (["--modality=flow", "--flow_length=0"], "--flow_length=0: give 1 or more"),
      (["--max_frames=-1"], "--max_frames=-1: give 1 or more"),
      (["--frame_stride=0"], "--frame_stride=0: give 1 or more"),
      (["--videos_per_shard=0"], "--videos_per_shard=0: give 1 or more"),
      (["--batch_size=0"], "--batch_size=0: give 1 or more"),
      (["--fps=-1"], "--fps=-1.0: give a rate above 0"),
      (["--levels="], "--levels is empty: give one or more of pool2")):
    with pytest.raises(ConfigError, match=re.escape(message)):
      extract.settings_from_flags(parsed(*COMMON, *paths, *extra))
  with pytest.raises(ConfigError, match="--splits is required with --source=flow_frames"):
    extract._check_required_flags(parsed("--source=flow_frames", *paths[::2]))


SMALL = extract.Settings(levels=("pool2",), image_size=32, videos_per_shard=4, batch_size=8)


def run_small(videos, class_names, out, settings=SMALL):
  return extract.extract(videos, class_names, out, settings, source="demo",
                         progress=False, out=io.StringIO())


def test_feature_scales_come_from_training_videos(tmp_path, monkeypatch):
  # Shards are written in hashed order, the test split first here; the
  # normalisation is still measured on training videos.
  class_names, videos = demo.demo_videos(0, 1, 1, num_frames=2, image_size=32)
  calibrate, seen = extract._calibrate, []

  def recording(split_videos, *args, **kwargs):
    seen.extend(v.split for v in split_videos)
    return calibrate(split_videos, *args, **kwargs)
  monkeypatch.setattr(extract, "_calibrate", recording)
  run_small(videos, class_names, str(tmp_path))
  assert list(features.read_metadata(str(tmp_path))["splits"])[0] == "test"
  assert seen and set(seen) == {"train"}


def test_the_estimate_shows_the_frames_and_their_jpeg_size(tmp_path):
  # The frames' line was lost: the frame count overwrote the 'frames' level.
  class_names, videos = demo.demo_videos(0, 1, 1, num_frames=2, image_size=32)
  raw = extract.Settings(**{**vars(SMALL), "store_frames": True})
  jpeg = extract.Settings(**{**vars(raw), "frames_jpeg_quality": 90})
  frames = sum(v.estimate_frames() for v in videos)
  side = raw.image_size
  assert extract.estimate_bytes(videos, raw)["frames"] == side * side * 3 * frames
  assert extract.estimate_bytes(videos, jpeg)["frames"] == \
      side * side * 3 * frames // extract.JPEG_RATIO
  printed = io.StringIO()
  extract.print_estimate(extract.estimate_bytes(videos, jpeg), len(videos), printed,
                         jpeg=True)
  lines = printed.getvalue().splitlines()
  assert f"{len(videos)} videos, {frames} frames" in lines[0]
  assert any(line.split()[0] == "frames" for line in lines[1:])
  assert "about 1/10 of their raw size" in printed.getvalue()


def test_resume_records_a_shard_the_metadata_missed_exactly_once(tmp_path):
  class_names, videos = demo.demo_videos(0, 1, 1, num_frames=2, image_size=32)
  out = str(tmp_path)
  assert run_small(videos, class_names, out).written_shards == 4
  complete = features.read_metadata(out)

  # A crash between a shard's rename and the metadata update: the shard is on disk,
  # its entry is not, and the split's totals are stale.
  crashed = copy.deepcopy(complete)
  lost = crashed["splits"]["train"]["shards"].pop(0)["name"]
  crashed["splits"]["train"]["num_videos"] = -1
  features.write_metadata(out, crashed)
  table = os.path.join(out, features.table_file(lost))
  shard_written = os.stat(table).st_mtime_ns

  summary = run_small(videos, class_names, out)
  assert (summary.written_shards, summary.skipped_shards) == (0, 4)
  assert features.read_metadata(out) == complete
  assert os.stat(table).st_mtime_ns == shard_written

  # Once recorded, a resume changes nothing, the metadata included.
  before = {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in os.listdir(out)}
  run_small(videos, class_names, out)
  after = features.read_metadata(out)
  assert [s["name"] for s in after["splits"]["train"]["shards"]].count(lost) == 1
  assert {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in os.listdir(out)} == before


def test_an_unfinished_extraction_is_refused_until_it_is_finished(tmp_path, monkeypatch):
  """metadata.json exists from the first shard on: a run or a conversion started
  while the extraction still writes (or after it stopped) must not read part of a
  split as the whole."""
  from grurcn_jax.data import convert, prepare
  from tests.training_setup import tiny_config
  class_names, videos = demo.demo_videos(0, 1, 1, num_frames=2, image_size=32)
  out = str(tmp_path / "feats")
  write_shard, written = features.write_shard, []

  def stopping_after_one(*args, **kwargs):
    if written:
      raise KeyboardInterrupt
    written.append(write_shard(*args, **kwargs))
    return written[-1]
  monkeypatch.setattr(features, "write_shard", stopping_after_one)
  with pytest.raises(KeyboardInterrupt):
    run_small(videos, class_names, out)
  monkeypatch.setattr(features, "write_shard", write_shard)

  metadata = features.read_metadata(out)
  listed = metadata["extraction"]["video_lists"]
  done = next(split for split in metadata["splits"])
  other = next(split for split in listed if split != done)
  assert features.unfinished(metadata, done) == (
      f"split {done!r} holds 4 of the {listed[done]['num_videos']} videos its extraction "
      f"listed: the extraction is still running or was stopped; rerun the same command "
      f"to finish it (it resumes)")
  assert f"holds 0 of the {listed[other]['num_videos']} videos" in features.unfinished(
      metadata, other)
  converting = dict(metadata, extraction=dict(metadata["extraction"], converted_from="/x"))
  assert "the conversion is still running" in features.unfinished(converting, done)
  config = tiny_config(out)
  config.model.levels, config.model.hidden = ("pool2",), (4,)
  with pytest.raises(FeatureFormatError, match=f"^{re.escape(out)}: split 'train' holds "):
    prepare.FeatureSpec.from_directory(config.data, config.model)
  with pytest.raises(FeatureFormatError, match="the extraction is still running"):
    features.ClipReader(out, metadata, done, ["pool2"])   # every loader's reader
  with pytest.raises(ConfigError, match=f"--src {re.escape(out)}: split "):
    convert.convert(out, str(tmp_path / "converted"), progress=False, out=io.StringIO())

  run_small(videos, class_names, out)   # finishes it
  finished = features.read_metadata(out)
  assert features.is_complete(finished)
  assert prepare.FeatureSpec.from_directory(config.data, config.model).level_shapes == {
      "pool2": (8, 8, 128)}
  converted = convert.convert(out, str(tmp_path / "converted"), int8_levels=["pool2"],
                              progress=False, out=io.StringIO())
  assert features.is_complete(converted)
  assert all(features.unfinished(converted, split) is None for split in listed)
  # A finished extraction is whole even where its counts cannot show it (a shard
  # recovered after a crash has lost its undecodable videos' list).
  finished["splits"]["train"]["failed"] = []
  finished["extraction"]["video_lists"]["train"]["num_videos"] += 1
  assert features.unfinished(finished, "train") is None


def test_frames_stored_as_jpeg_are_the_frames_within_jpeg_error(tmp_path):
  # The demo's rendered videos: flat shapes on a plain background, as real frames
  # are smooth (JPEG is meant for them).
  class_names, videos = demo.demo_videos(0, 1, 1, num_frames=2, image_size=32)
  raw = extract.Settings(**{**vars(SMALL), "store_frames": True})
  jpeg = extract.Settings(**{**vars(raw), "frames_jpeg_quality": 90})
  run_small(videos, class_names, str(tmp_path / "raw"), raw)
  run_small(videos, class_names, str(tmp_path / "jpeg"), jpeg)
  info = features.read_metadata(str(tmp_path / "jpeg"))["levels"][features.FRAMES]
  assert (info["encoding"], info["quality"]) == ("jpeg", 90)
  stored = {name: sum(os.path.getsize(tmp_path / name / f)
                      for f in os.listdir(tmp_path / name) if f.endswith(".frames"))
            for name in ("raw", "jpeg")}
  assert stored["jpeg"] < stored["raw"] / 2
  for a, b in zip(features.read_videos(str(tmp_path / "raw"), "train"),
                  features.read_videos(str(tmp_path / "jpeg"), "train")):
    error = a.features["frames"].astype(float) - b.features["frames"]
    # Above 30 dB PSNR, the usual mark of a faithful JPEG (these 32 px frames of
    # sharp shapes: 32.5-33.2 dB at quality 90).
    assert 10 * np.log10(255 ** 2 / np.mean(error ** 2)) > 30
    # The levels come from the decoded video, not from the stored JPEG: identical.
    np.testing.assert_array_equal(a.features["pool2"], b.features["pool2"])


def test_library_errors_are_errors_not_exits(tmp_path):
  class_names, videos = demo.demo_videos(0, 1, 0, num_frames=2, image_size=32)

  def undecodable():
    raise VideoDecodeError("broken.avi: no video frames")

  broken = [extract.Video(v.video_id, v.label, v.split, load=undecodable,
                          estimate_frames=v.estimate_frames) for v in videos]
  with pytest.raises(VideoDecodeError, match="none of the first videos could be decoded"):
    run_small(broken, class_names, str(tmp_path / "broken"))

  run_small(videos, class_names, str(tmp_path / "ok"))
  other = extract.Settings(**{**vars(SMALL), "seed": 1})
  with pytest.raises(ConfigError, match=r"other settings \(--seed: 0 there, 1 now\)"):
    run_small(videos, class_names, str(tmp_path / "ok"), other)
  (tmp_path / "afile").write_text("")
  for out, message in ((tmp_path / "afile", "is a file, not a directory"),
                       (tmp_path / "afile" / "out", "cannot be created: ")):
    with pytest.raises(ConfigError, match=f"--out {out} {message}"):
      run_small(videos, class_names, str(out))


def test_values_float16_cannot_hold_are_an_error_naming_the_video(tmp_path, monkeypatch):
  """Stored NaN or infinity would poison training silently: broken weights stop
  extraction at calibration, and normalised values beyond float16's range stop it
  at the video (its id in the message), the shards written before it kept."""
  import jax
  class_names, videos = demo.demo_videos(0, 2, 0, num_frames=2, image_size=32)
  init = extract.FeatureExtractor.__init__

  def broken_weights(self, settings):
    init(self, settings)
    self._params = jax.tree.map(lambda w: w * np.nan, self._params)
  with monkeypatch.context() as patched:
    patched.setattr(extract.FeatureExtractor, "__init__", broken_weights)
    # NaN where max() propagates it, zeros where the ReLU drops it (XLA:CPU).
    with pytest.raises(ExtractionError, match=r"^VGG-16 \(--weights=random\) gave "
                       r"(NaN or infinite|constant) pool2 activations on the "
                       r"calibration frames"):
      run_small(videos, class_names, str(tmp_path / "nan"))

  # NaN activations in the second video of the second shard's batch (4 videos of
  # 2 frames a batch): that video is named, and the first shard is kept.
  batches, calibrate = extract.FeatureExtractor._batches, extract._calibrate
  network_input, loaded, batches_after = extract.network_input, [], []

  def calibrate_once(*args):
    stats = calibrate(*args)
    batches_after.append(0)   # calibrated: from now on, count
    return stats

  def recording_input(video, *args, **kwargs):
    if batches_after:
      loaded.append(video.video_id)
    return network_input(video, *args, **kwargs)

  def nan_in_one_video(self, frames):
    for start, result in batches(self, frames):
      if batches_after:
        batches_after[0] += 1
        if batches_after[0] == 2:
          result = {level: a.copy() for level, a in result.items()}
          for a in result.values():
            a[2:4] = np.nan   # rows 2-3: the batch's second video
      yield start, result
  out = tmp_path / "nan_later"
  with monkeypatch.context() as patched:
    patched.setattr(extract, "_calibrate", calibrate_once)
    patched.setattr(extract, "network_input", recording_input)
    patched.setattr(extract.FeatureExtractor, "_batches", nan_in_one_video)
    with pytest.raises(ExtractionError) as error:
      run_small(videos, class_names, str(out))
  assert len(loaded) >= 6, loaded
  assert str(error.value) == (
      f"{loaded[5]}: VGG-16 (--weights=random) gave NaN or infinite pool2 "
      f"activations: the weights are broken (a fine-tune that diverged?)")
  tables = [name for name in os.listdir(out)
            if name.endswith(".json") and name != features.METADATA_FILE]
  assert len(tables) == 1, os.listdir(out)   # the first shard, whole

  # Statistics of a near-constant calibration sample: the videos' values land
  # 1e9 scales from its mean (float16 holds 65504).
  monkeypatch.setattr(extract, "_calibrate", lambda *args, **kwargs: {
      level: {**stats, "scale": 1e-9} for level, stats in calibrate(*args, **kwargs).items()})
  with pytest.raises(ExtractionError) as error:
    run_small(videos, class_names, str(tmp_path / "overflow"),
              dataclasses.replace(SMALL, videos_per_shard=1, batch_size=2))
  message = str(error.value)
  assert re.match(r"(.+): pool2 values (\S+) scales from the calibration mean, beyond "
                  r"float16's range \(65504\)", message), message
  assert message.split(":")[0] in {v.video_id for v in videos}
  assert float(re.search(r"pool2 values (\S+) scales", message)[1]) > 65504


def test_resuming_needs_the_same_modality_split_source_and_videos(tmp_path, caplog):
  """Resumed extraction skips the shards already written, so only the same
  settings, split and list of videos may continue a directory."""
  paths = ["--videos=v", "--splits=s", "--out=o"]
  assert extract.settings_from_flags(parsed(*COMMON, *paths, "--split=2")).split == 2
  assert extract.settings_from_flags(parsed(*paths, "--source=folders")).split is None
  class_names, videos = demo.demo_videos(0, 1, 1, num_frames=3, image_size=32)
  ucf = extract.Settings(**{**vars(SMALL), "split": 1})
  out = str(tmp_path / "split1")
  extract.extract(videos, class_names, out, ucf, source="ucf101", progress=False,
                  out=io.StringIO())
  assert features.read_metadata(out)["complete"]

  def rerun(videos=videos, settings=ucf, source="ucf101", directory=out):
    return extract.extract(videos, class_names, directory, settings, source=source,
                           progress=False, out=io.StringIO())

  again = rerun()
  assert (again.written_shards, again.skipped_shards) == (0, 4)
  with pytest.raises(ConfigError, match=r"\(--split: 1 there, 2 now\)"):
    rerun(settings=extract.Settings(**{**vars(ucf), "split": 2}))
  with pytest.raises(ConfigError, match=r"\(--split: 1 there, none now; "
                                        r"--source: ucf101 there, folders now\)"):
    rerun(settings=SMALL, source="folders")
  for changed in (videos[1:], videos + [dataclasses.replace(videos[0], video_id="new")]):
    with pytest.raises(ConfigError, match=r"the '(train|test)' videos differ .* use a "
                                          r"new --out$"):
      rerun(videos=changed)
  # A directory begun by the earlier decoder resumes, and says what differs.
  assert features.read_metadata(out)["extraction"]["decoder"] == 2
  old = features.read_metadata(out)
  del old["extraction"]["decoder"]
  features.write_metadata(out, old)
  with caplog.at_level("WARNING"):
    assert rerun().skipped_shards == 4
  assert "begun by decoder version 1, this is version 2: videos with rotation" in (
      caplog.text)
  assert "decoder" not in features.read_metadata(out)["extraction"]   # as written
  # A directory written before --split and the lists were recorded resumes.
  old = features.read_metadata(out)
  for key in ("split", "video_lists"):
    del old["extraction"][key]
  features.write_metadata(out, old)
  assert rerun().skipped_shards == 4
  # ... and records them: the next resume checks them.
  assert "video_lists" in features.read_metadata(out)["extraction"]
  with pytest.raises(ConfigError, match=r"the '(train|test)' videos differ"):
    rerun(videos=videos[1:])

  # A flow directory is not resumed as RGB (its record has keys RGB's lacks).
  flow = str(tmp_path / "flow")
  rerun(settings=extract.Settings(**{**vars(ucf), "modality": "flow", "flow_length": 1}),
        directory=flow)
  with pytest.raises(ConfigError, match=r"\(--modality: flow there, rgb now\)"):
    rerun(directory=flow)


def test_a_weights_file_that_is_not_there_is_an_error_before_anything_is_read():
  with pytest.raises(ConfigError, match=r"--weights=no/such/vgg16.h5: no such VGG-16 "
                                        r"weights file \(/.*/no/such/vgg16.h5\)"):
    extract.settings_from_flags(parsed(*COMMON, "--videos=v", "--splits=s", "--out=o",
                                       "--weights=no/such/vgg16.h5"))


def test_a_weights_file_recorded_as_typed_resumes_from_where_it_began(tmp_path,
                                                                    monkeypatch):
  # Records made before weights files were recorded absolute hold the path as it
  # was typed: the same file, resolved from here, continues the directory.
  monkeypatch.chdir(tmp_path)
  record = {"weights": str(tmp_path / "w" / "vgg16.h5"), "video_lists": {}}
  metadata = {"extraction": dict(record, weights="w/vgg16.h5"), "class_names": []}
  extract._check_compatible(metadata, record, [], "out")
  other = dict(record, weights=str(tmp_path / "other.h5"))
  with pytest.raises(ConfigError, match=r"weights: .*w/vgg16.h5 there, .*other.h5 now"):
    extract._check_compatible(metadata, other, [], "out")


def test_folder_tree_source(ucf_tree):
  videos, _ = ucf_tree
  class_names, entries = ucf101.folder_entries(videos)
  assert class_names == CLASSES
  assert len(entries) == 7 and {e.split for e in entries} == {"train"}
  # One level too high: its folders hold class folders, not videos.
  with pytest.raises(SplitFileError, match=r"no videos \(.avi, .mp4, .* in the class "
                                           r"folders of .* \(splits, videos\): --videos is"):
    ucf101.folder_entries(os.path.dirname(videos))


def test_hidden_folders_and_files_are_not_classes_or_videos(tmp_path):
  """A notebook's .ipynb_checkpoints, an unzipped macOS archive's __MACOSX and its
  ._name files beside each video: they were classes (shifting every label after
  them) and videos (that then failed to decode)."""
  for folder in ("Jump", "Run", ".ipynb_checkpoints", "__MACOSX"):
    (tmp_path / folder).mkdir()
    (tmp_path / folder / "a.avi").write_bytes(b"")
  (tmp_path / "Jump" / "._a.avi").write_bytes(b"")
  class_names, entries = ucf101.folder_entries(str(tmp_path))
  assert class_names == ["Jump", "Run"]
  assert [(e.video_id, e.label) for e in entries] == [("Jump/a.avi", 0), ("Run/a.avi", 1)]


def test_a_class_index_saved_with_a_byte_order_mark_reads(tmp_path):
  (tmp_path / "classInd.txt").write_text("1 Jump\n2 Run\n", encoding="utf-8-sig")
  assert ucf101.read_class_index(str(tmp_path)) == ["Jump", "Run"]


def test_split_files_naming_no_video_under_videos_is_a_clear_error(ucf_tree, tmp_path):
  videos, splits = ucf_tree
  with pytest.raises(SplitFileError, match=r"none of the 7 videos the split files list "
                                           r"is under --videos=.*: --videos is the folder"):
    extract.run(parsed(*COMMON, f"--videos={os.path.dirname(videos)}", f"--splits={splits}",
                       f"--out={tmp_path / 'x'}"))
  assert not os.path.exists(tmp_path / "x")
  empty = tmp_path / "empty_splits"
  empty.mkdir()
  (empty / "classInd.txt").write_text("1 JumpRope\n")
  (empty / "trainlist01.txt").write_text("")
  (empty / "testlist01.txt").write_text("")
  with pytest.raises(SplitFileError, match=r"the split files in .* list no videos for "
                                           r"--split=1"):
    extract.run(parsed(*COMMON, f"--videos={videos}", f"--splits={empty}",
                       f"--out={tmp_path / 'x'}"))


def test_long_videos_are_calibrated_on_some_frames_and_normalised_batch_by_batch():
  """Memory stays bounded by what is stored: statistics from CALIBRATION_FRAMES of
  a video, and the stored float16 values filled a batch at a time, never a whole
  video's float32 activations (several GB at 224 px)."""
  import tracemalloc
  settings = extract.Settings(levels=("pool2", "pool3"), image_size=32, batch_size=8)
  n = 128
  frames = np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), np.uint8)
  video = extract.Video("long", 0, "train", lambda: (frames, np.arange(n)), lambda: n)
  extractor = extract.FeatureExtractor(settings)
  stats = extract._calibrate([video], extractor, settings)
  picked = extract.evenly_spaced(n, extract.CALIBRATION_FRAMES)
  assert len(picked) == 16 and picked[0] == 0 and picked[-1] == n - 1
  resized = video_lib.resize_and_crop(frames, 32, None)   # as extraction does
  assert stats == {level: features.level_stats(a)
                   for level, a in extractor(resized[picked]).items()}
  whole = extractor(frames)
  tracemalloc.start()
  try:
    stored = extractor.normalized(frames, stats)
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  for level in settings.levels:
    np.testing.assert_array_equal(stored[level],
                                  features.normalize(whole[level], stats[level]))
  stored_bytes = sum(a.nbytes for a in stored.values())
  batch_float32 = 2 * stored_bytes * settings.batch_size // n
  # The output, and a few float32 batches (the activations and normalize's
  # temporaries); the whole float32 video would be twice the output, again.
  assert peak < stored_bytes + 4 * batch_float32, (peak, stored_bytes)


# -- the flow stream -------------------------------------------------------------

FLOW = extract.Settings(levels=("pool2",), image_size=32, frame_stride=2,
                        videos_per_shard=2, batch_size=8, modality="flow", flow="dis",
                        flow_length=3)


def test_flow_features_are_vgg16_on_stacked_flow_windows_and_resume(ucf_tree, tmp_path):
  videos_dir, splits = ucf_tree
  class_names, entries = ucf101.ucf101_entries(videos_dir, splits, 1)
  videos = extract._file_videos(entries, FLOW)
  out = str(tmp_path / "flow")
  first = extract.extract(videos, class_names, out, FLOW, source="ucf101",
                          progress=False, out=io.StringIO())
  assert first.written_videos == 6 and [v for v, _ in first.failed] == [
      "JumpRope/v_JumpRope_g09_c01.avi"]
  metadata = features.read_metadata(out)
  assert {k: metadata["extraction"][k] for k in
          ("modality", "flow", "flow_bound", "flow_length")} == {
      "modality": "flow", "flow": "dis", "flow_bound": 20.0, "flow_length": 3}
  assert metadata["backbone"]["input"] == "flow" and metadata["backbone"]["channels"] == 6
  stored = {v.video_id: v for s in ("train", "test") for v in features.read_videos(out, s)}
  # Videos of 6, 7, 8 frames have 5, 6, 7 flows; stride 2 keeps windows 0, 2, 4, ...
  assert {k: list(v.frame_indices) for k, v in stored.items()} == {
      f"{c}/v_{c}_g{g:02d}_c01.avi": list(range(0, n, 2))
      for c in CLASSES for g, n in ((1, 5), (2, 6), (3, 7))}

  # One video by hand: decode, resize, flow, quantise, stack, select, VGG-16.
  entry = next(e for e in entries if e.video_id == "Rowing/v_Rowing_g03_c01.avi")
  frames, _ = video_lib.decode(entry.path)
  frames = video_lib.resize_and_crop(frames, 32)
  from grurcn_jax.data import flow as flow_lib
  windows = flow_lib.stack_windows(
      flow_lib.quantize(flow_lib.video_flow(frames, "dis")), 3)[::2]
  assert windows.shape == (4, 32, 32, 6)
  expected = features.normalize(extract.FeatureExtractor(FLOW)(windows)["pool2"],
                                metadata["levels"]["pool2"])
  np.testing.assert_array_equal(stored[entry.video_id].features["pool2"], expected)

  again = extract.extract(videos, class_names, out, FLOW, source="ucf101",
                          progress=False, out=io.StringIO())
  assert (again.written_shards, again.skipped_shards) == (0, first.written_shards)
  with pytest.raises(ConfigError, match="--flow_length: 3 there, 2 now"):
    extract.extract(videos, class_names, out, extract.Settings(
        **{**vars(FLOW), "flow_length": 2}), source="ucf101", progress=False,
        out=io.StringIO())


def test_flow_windows_are_stacked_a_batch_at_a_time(monkeypatch):
  """A video's windows at once are L times its flows (1.8 GB for a UCF-101 video
  of 1,776 frames at 224 px, L=10, a window at every step): they are stacked a
  batch at a time, across videos too, into the same features."""
  from grurcn_jax.data import flow as flow_lib
  rng = np.random.default_rng(0)
  settings = extract.Settings(**{**vars(FLOW), "frame_stride": 1})   # batches of 8
  videos = [rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8) for n in (21, 6)]
  windows = [extract.network_input(extract.Video(f"v{n}", 0, "train", None, None),
                                   frames, np.arange(len(frames)), settings)[0]
             for n, frames in enumerate(videos)]
  every = [flow_lib.stack_windows(flow_lib.quantize(flow_lib.video_flow(f, "dis")), 3)
           for f in videos]
  assert [len(w) for w in windows] == [20, 5]
  np.testing.assert_array_equal(windows[0][5:13], every[0][5:13])
  np.testing.assert_array_equal(windows[0][7], every[0][7])
  np.testing.assert_array_equal(np.asarray(windows[1]), every[1])
  np.testing.assert_array_equal(np.stack(list(windows[1])), every[1])

  stacked, stack = [], flow_lib.stack_computed
  monkeypatch.setattr(flow_lib, "stack_computed",
                      lambda *args: (stacked.append(len(args[-1])), stack(*args))[1])
  extractor = extract.FeatureExtractor(settings)
  stats = {"pool2": {"mean": 0.5, "scale": 2.0}}
  lazily = extractor.normalized(extract._Rows(windows), stats)
  # Batches of 8 rows: 8, 8, 4 of the first video, then 4 of it and 4 of the
  # second, then its last one.
  assert stacked == [8, 8, 4, 4, 1], stacked
  at_once = extractor.normalized(np.concatenate(every), stats)
  np.testing.assert_array_equal(lazily["pool2"], at_once["pool2"])


def test_flow_frames_made_elsewhere_import_from_the_tsn_layout(ucf_tree, tmp_path):
  from PIL import Image
  videos_dir, splits = ucf_tree
  class_names, entries = ucf101.ucf101_entries(videos_dir, splits, 1)
  root = tmp_path / "tsn"
  counts = {}
  # TSN's flat layout: one folder per video, named by its stem; g01 and g03
  # (train and test) of each class have one.
  for e in [e for e in entries if "_g01_" in e.video_id or "_g03_" in e.video_id]:
    folder = root / os.path.splitext(os.path.basename(e.video_id))[0]
    folder.mkdir(parents=True)
    counts[e.video_id] = 3 + len(counts)
    for t in range(counts[e.video_id]):
      for axis in "xy":
        Image.fromarray(np.full((32, 32), 100 + 10 * t, np.uint8)).save(
            folder / f"flow_{axis}_{t + 1:05d}.jpg")
  imported = extract.flow_frames_videos(
      ucf101.ucf101_entries(str(root), splits, 1)[1], FLOW)
  out = str(tmp_path / "feats")
  summary = extract.extract(imported, class_names, out, FLOW, source="flow_frames",
                            progress=False, out=io.StringIO())
  assert summary.written_videos == 4 and len(summary.failed) == 3  # no folder: named
  stored = {v.video_id: v.num_frames for s in ("train", "test")
            for v in features.read_videos(out, s)}
  assert stored == {v: len(range(0, n, 2)) for v, n in counts.items()}


def test_flow_is_computed_only_where_a_window_takes_it(monkeypatch):
  """TV-L1 took 1.2 s a flow at 224 px here: at --frame_stride=10 with windows
  of 2 flows, 8 of a 40-frame video's 39 flows are needed; calibration needs only
  its evenly spaced windows' flows."""
  from grurcn_jax.data import flow as flow_lib
  frames = np.random.default_rng(0).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
  indices = np.arange(100, 140)
  video = extract.Video("v", 0, "train", load=None, estimate_frames=None)
  settings = extract.Settings(modality="flow", flow="dis", flow_length=2, frame_stride=10)
  every = flow_lib.quantize(flow_lib.video_flow(frames, "dis"))
  estimator, computed = flow_lib._estimator, []

  def counting(algorithm):
    estimate = estimator(algorithm)
    return lambda a, b: (computed.append(1), estimate(a, b))[1]
  monkeypatch.setattr(flow_lib, "_estimator", counting)
  windows, kept = extract.network_input(video, frames, indices, settings)
  assert len(computed) == 8
  np.testing.assert_array_equal(windows, flow_lib.stack_windows(every, 2, [0, 10, 20, 30]))
  np.testing.assert_array_equal(kept, [100, 110, 120, 130])
  # Windows past the end repeat the last flow, computed once.
  computed.clear()
  last = extract.Settings(**{**vars(settings), "frame_stride": 38})
  windows, _ = extract.network_input(video, frames, indices, last)
  np.testing.assert_array_equal(windows, flow_lib.stack_windows(every, 2, [0, 38]))
  assert len(computed) == 3   # flows 0, 1 and 38
  computed.clear()
  dense = extract.Settings(**{**vars(settings), "frame_stride": 1})
  windows, kept = extract.network_input(video, frames, indices, dense, at_most=4)
  starts = [0, 13, 25, 38]
  np.testing.assert_array_equal(windows, flow_lib.stack_windows(every, 2, starts))
  np.testing.assert_array_equal(kept, [100 + s for s in starts])
  assert len(computed) == 7   # 4 windows of 2 flows, the last one's repeated


def test_ctrl_c_during_extraction_is_one_line_and_says_it_goes_on(monkeypatch, capsys):
  """It printed a KeyboardInterrupt traceback (a resume then went on as designed)."""
  def interrupted(*args, **kwargs):
    raise KeyboardInterrupt
  monkeypatch.setattr(extract, "_check_required_flags", lambda: None)
  monkeypatch.setattr(extract, "run", interrupted)
  with pytest.raises(SystemExit) as exit:
    extract.main(["extract"])
  assert exit.value.code == 130
  assert capsys.readouterr().err == (
      "\nerror: interrupted (Ctrl-C); the shards already written are kept: run the same "
      "command again to go on\n")
