"""The captioning demo: captions name the two motions in order; a video played
backwards is the video of the reversed caption; the motions are visible."""

import numpy as np
import pytest

from grurcn_jax.data import demo_captions as dc


def _centre(frame, background=128):
  """Centre of mass of the pixels that differ from the background."""
  mask = np.abs(frame.astype(int) - background).max(axis=-1) > 60
  ys, xs = np.nonzero(mask)
  return ys.mean(), xs.mean(), mask.sum()


def test_captions_name_colour_shape_and_both_motions_in_order():
  rng = np.random.default_rng(0)
  for _ in range(50):
    video = dc.sample(rng, 8, 48)
    first, second = (dc.MOTIONS[m] for m in video.motions)
    assert video.motions[0] // 2 != video.motions[1] // 2      # different kinds
    assert video.caption == (f"a {video.color} {video.shape} {dc.PHRASES[first]} "
                             f"and then {dc.PHRASES[second]}")


def test_a_video_played_backwards_is_the_reversed_caption():
  rng = np.random.default_rng(1)
  for _ in range(20):
    video = dc.sample(rng, 8, 48)
    back = dc.reversed_video(video)
    np.testing.assert_array_equal(dc.render(back), dc.render(video)[::-1])
    twin = {m: m ^ 1 for m in range(8)}
    assert back.motions == (twin[video.motions[1]], twin[video.motions[0]])
    assert dc.reversed_video(back).caption == video.caption


@pytest.mark.parametrize("motion,axis,sign", [("right", 1, 1), ("left", 1, -1),
                                              ("down", 0, 1), ("up", 0, -1)])
def test_shifts_move_the_object_that_way_and_sizes_change_its_area(motion, axis, sign):
  rng = np.random.default_rng(2)
  index = dc.MOTIONS.index(motion)
  checked = 0
  for _ in range(40):
    video = dc.sample(rng, 8, 48)
    if index not in video.motions:
      continue
    checked += 1
    phase = video.motions.index(index)
    frames = dc.render(video)[4 * phase:4 * phase + 4]
    start, end = _centre(frames[0]), _centre(frames[-1])
    assert sign * (end[axis] - start[axis]) > 0.2 * 48 * 0.8
  assert checked >= 3
  for name, grows in (("grow", True), ("shrink", False)):
    video = dc.CaptionedVideo((dc.MOTIONS.index(name), 0), "red", "square",
                              (24.0, 12.0), 5.0, 0.0, tuple(range(8)), 48)
    frames = dc.render(video)
    assert (_centre(frames[3])[2] > _centre(frames[0])[2]) == grows


def test_the_object_stays_inside_the_frame():
  rng = np.random.default_rng(3)
  for _ in range(100):
    video = dc.sample(rng, 8, 48)
    for y, x, size, _ in dc._states(video):
      assert 0 <= y - size and y + size <= 48 and 0 <= x - size and x + size <= 48


def test_build_writes_features_and_captions(tmp_path):
  from grurcn_jax.data import captions, features
  spec = dc.CaptionDemoSpec(num_train=6, num_test=2, num_frames=4, image_size=32,
                            levels=("pool2",), videos_per_shard=4)
  dc.build(str(tmp_path), spec, progress=False)
  metadata = features.read_metadata(str(tmp_path))
  assert metadata["splits"]["train"]["num_videos"] == 6
  references, vocabulary = captions.read_captions(str(tmp_path))
  assert len(references) == 8 and all(len(r) == 1 for r in references.values())
  train_words = {w for v, r in references.items() if v.startswith("train")
                 for w in r[0].split()}
  assert set(vocabulary.words[4:]) == train_words
  # Built once: a second call finds it complete and changes nothing.
  before = sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.iterdir())
  dc.build(str(tmp_path), spec, progress=False)
  assert sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.iterdir()) == before


def test_motion_words_are_read_in_order_and_scored_per_video():
  assert dc.motion_phrases("a red square moves left and then grows") == (
      "moves left", "grows")
  assert dc.motion_phrases("a disc turns anticlockwise and then turns clockwise") == (
      "turns anticlockwise", "turns clockwise")
  assert dc.motion_phrases("a blue diamond") == ()
  references = {"a": ["a red square moves left and then grows"],
                "b": ["a red disc shrinks and then moves up"]}
  generated = {"a": "a green disc moves left and then grows",       # colour wrong: fine
               "b": "a red disc moves up and then shrinks"}         # order wrong
  assert dc.motion_accuracy(generated, references) == 0.5
