"""Score fusion of per-video score files."""

import subprocess
import sys

import numpy as np
import pytest

from grurcn_jax import fuse
from grurcn_jax.errors import FusionError


def scores(ids, labels, probs):
  return {"video_id": np.array(ids), "label": np.array(labels),
          "probs": np.array(probs, np.float64), "class_names": np.array(["a", "b"])}


def test_weighted_fusion_matches_by_video_id():
  # Fusion is by id: the same videos in another order fuse alike.
  rgb = scores(["v1", "v2", "v3"], [0, 1, 1], [[0.9, 0.1], [0.7, 0.3], [0.2, 0.8]])
  # Another order, one extra video; flow is right on v2, wrong on v1 (weakly).
  flow = scores(["v3", "v2", "v1", "v4"], [1, 1, 0, 0],
                [[0.4, 0.6], [0.1, 0.9], [0.45, 0.55], [0.5, 0.5]])
  with pytest.raises(FusionError, match=r"cover other videos \(3, 4 videos, 3 shared\)"):
    fuse.fuse([rgb, flow], [1.0, 2.0])
  result = fuse.fuse([rgb, flow], [1.0, 2.0], allow_partial=True)
  assert result["num_videos"] == 3 and result["videos_left_out"] == [0, 1]
  np.testing.assert_allclose(result["stream_video_accuracy"], [2 / 3, 2 / 3])
  # v1: 0.9 + 0.9 vs 0.1 + 1.1 -> 0 (correct); v2: 0.7 + 0.2 vs 0.3 + 1.8 -> 1
  # (correct); v3 -> 1 (correct): each stream's error is fixed by the other.
  assert result["fused_video_accuracy"] == 1.0


def test_round_trip_through_an_npz_file(tmp_path):
  path = tmp_path / "s.npz"
  s = scores(["x"], [1], [[0.1, 0.9]])
  with open(path, "wb") as f:
    np.savez(f, **s, level_probs=np.zeros((1, 1, 2)))
  loaded = fuse.load_scores(str(path))
  assert loaded["video_id"].tolist() == ["x"]


def test_mismatches_are_clear():
  a = scores(["v1"], [0], [[1, 0]])
  with pytest.raises(FusionError, match="disagree on the labels"):
    fuse.fuse([a, scores(["v1"], [1], [[1, 0]])], [1, 1])
  with pytest.raises(FusionError, match="share no video id"):
    fuse.fuse([a, scores(["v9"], [0], [[1, 0]])], [1, 1])
  with pytest.raises(FusionError, match="give one weight per score file: 2 files, 1 "
                                        "weights"):
    fuse.fuse([a, a], [1])
  # One file (the default weights are one per file): it said "got 1 file(s) and 1
  # weight(s)", as if the weights were wrong.
  with pytest.raises(FusionError, match=r"needs two or more score files \(one per "
                                        r"stream\); got 1$"):
    fuse.fuse([a], [1])
  other = dict(scores(["v1"], [0], [[1, 0]]), class_names=np.array(["a", "c"]))
  with pytest.raises(FusionError, match=r"different class lists: file 1 has 2 classes, "
                                        r"file 2 2; they first differ at class 2 "
                                        r"\('b' against 'c'\)"):
    fuse.fuse([a, other], [1, 1])
  longer = dict(a, class_names=np.array(["a", "b", "c"]))
  with pytest.raises(FusionError, match=r"file 2 3; they first differ at class 3 "
                                        r"\(none against 'c'\)"):
    fuse.fuse([a, longer], [1, 1])
  with pytest.raises(FusionError, match="cannot read scores"):
    fuse.load_scores("/nonexistent/scores.npz")


def test_files_that_are_not_scores_are_named(tmp_path):
  text, npy, bad = tmp_path / "eval_metrics.json", tmp_path / "p.npy", tmp_path / "bad.npz"
  text.write_text('{"video_accuracy": 0.9}')
  np.save(npy, np.zeros((2, 2)))
  with open(bad, "wb") as f:   # 3 ids, 2 classes, probs of 2 videos
    np.savez(f, **dict(scores(["v1", "v2", "v3"], [0, 1, 1], [[1, 0], [0, 1]])))
  for path in (text, npy):
    with pytest.raises(FusionError, match=f"{path} is not an eval_scores.npz file"):
      fuse.load_scores(str(path))
  with pytest.raises(FusionError, match=r"inconsistent: 3 video ids and 2 classes, but "
                                        r"probs \[2, 2\] and labels \[3\]"):
    fuse.load_scores(str(bad))


@pytest.mark.parametrize("given", [["nan", "1"], ["1", "-1"], ["0", "0"], ["1", "x"]])
def test_weights_must_be_finite_non_negative_numbers(given):
  with pytest.raises(FusionError, match=r"^--weights=" + ",".join(given)):
    fuse.parse_weights(given)
  assert fuse.parse_weights(["0", "1.5"]) == [0.0, 1.5]


def test_same_videos_in_another_order_fuse_without_being_asked():
  rgb = scores(["v1", "v2"], [0, 1], [[0.6, 0.4], [0.6, 0.4]])
  flow = scores(["v2", "v1"], [1, 0], [[0.0, 1.0], [0.9, 0.1]])
  result = fuse.fuse([rgb, flow], [1.0, 1.0])
  assert result["videos_left_out"] == [0, 0] and result["num_videos"] == 2
  assert result["stream_video_accuracy"] == [0.5, 1.0]
  assert result["fused_video_accuracy"] == 1.0


def test_the_program_refuses_partial_scores_unless_asked(tmp_path):
  paths = []
  for name, ids in (("rgb", ["v1", "v2"]), ("flow", ["v1"])):
    path = tmp_path / f"{name}.npz"
    s = scores(ids, [0] * len(ids), [[0.9, 0.1]] * len(ids))
    with open(path, "wb") as f:
      np.savez(f, **s)
    paths.append(str(path))
  run = lambda *flags: subprocess.run(
      [sys.executable, "-m", "grurcn_jax.fuse", f"--scores={','.join(paths)}", *flags],
      capture_output=True, text=True, timeout=120)
  refused = run()
  assert refused.returncode == 1 and "error: the score files cover other videos" in refused.stderr
  fused = run("--allow_partial")
  assert fused.returncode == 0, fused.stderr
  assert "(1 of its videos left out)" in fused.stdout and "on 1 videos" in fused.stdout
  unwritable = run("--allow_partial", f"--out={paths[0]}/result.json")
  assert unwritable.returncode == 1
  assert unwritable.stderr.startswith(f"error: cannot write --out={paths[0]}/result.json: ")
  assert "Traceback" not in unwritable.stderr
