r"""Score fusion: the paper's RGB + optical-flow late fusion.

  python -m grurcn_jax.fuse --scores=rgb/eval_scores.npz,flow/eval_scores.npz \
      --weights=1,1.5

Each file is an evaluation's per-video scores (grurcn_jax.writers writes eval_scores.npz).
Videos are matched by id; the fused prediction is the weighted sum of the video-level
class probabilities. Prints each stream's and the fused video accuracy. The files must
cover the same videos (a stream whose extraction skipped videos, or another split,
would make every figure one of fewer videos than its run reported);
--allow_partial fuses the videos they share and says how many each left out.
"""

import io
import json
import sys
from typing import Dict, List, Sequence

from absl import app, flags
import numpy as np

from grurcn_jax import files, flag_parsing
from grurcn_jax.errors import FusionError


def load_scores(path: str) -> Dict[str, np.ndarray]:
  """An evaluation's eval_scores.npz, its arrays' shapes checked."""
  if not files.exists(path):
    raise FusionError(f"cannot read scores from {path}: there is no such file")
  try:
    raw = files.read_bytes(path)
  except OSError as e:
    raise FusionError(f"cannot read scores from {path}: {e}") from None
  if not raw.startswith(b"PK"):   # .npz files are zip archives
    raise FusionError(f"{path} is not an eval_scores.npz file (the .npz archive an "
                      f"evaluation writes)")
  try:
    data = np.load(io.BytesIO(raw))
    scores = {k: data[k] for k in ("video_id", "label", "probs", "class_names")}
  except (OSError, KeyError, ValueError) as e:
    raise FusionError(f"cannot read scores from {path}: {e}") from None
  n, classes = len(scores["video_id"]), len(scores["class_names"])
  if scores["probs"].shape != (n, classes) or scores["label"].shape != (n,):
    raise FusionError(
        f"{path} is inconsistent: {n} video ids and {classes} classes, but probs "
        f"{list(scores['probs'].shape)} and labels {list(scores['label'].shape)}")
  return scores


def parse_weights(given: Sequence[str]) -> List[float]:
  """--weights: finite, none negative, not all zero."""
  try:
    weights = [float(w) for w in given]
  except ValueError:
    raise FusionError(f"--weights={','.join(given)}: give numbers, one per score "
                      f"file") from None
  if not all(np.isfinite(w) and w >= 0 for w in weights) or not any(weights):
    raise FusionError(f"--weights={','.join(given)}: give finite weights of 0 or more, "
                      f"not all 0")
  return weights


def fuse(scores: Sequence[Dict[str, np.ndarray]], weights: Sequence[float],
         allow_partial: bool = False) -> Dict:
  """Weighted sum of per-video probabilities over the videos of the streams: the
  same videos in each, or (`allow_partial`) those they share."""
  if len(scores) < 2:
    raise FusionError(f"fusion needs two or more score files (one per stream); got "
                      f"{len(scores)}")
  if len(scores) != len(weights):
    raise FusionError(f"give one weight per score file: {len(scores)} files, "
                      f"{len(weights)} weights")
  for i, s in enumerate(scores[1:], 1):
    if list(s["class_names"]) != list(scores[0]["class_names"]):
      first, other = ([str(c) for c in x["class_names"]] for x in (scores[0], s))
      differ = next((k for k, (a, b) in enumerate(zip(first, other)) if a != b),
                    min(len(first), len(other)))
      name = lambda names: repr(names[differ]) if differ < len(names) else "none"
      raise FusionError(
          f"the score files have different class lists: file 1 has {len(first)} "
          f"classes, file {i + 1} {len(other)}; they first differ at class "
          f"{differ + 1} ({name(first)} against {name(other)})")
  videos = [set(s["video_id"].tolist()) for s in scores]
  common = sorted(set.intersection(*videos))
  if not common:
    raise FusionError("the score files share no video id")
  left_out = [len(v) - len(common) for v in videos]
  if any(left_out) and not allow_partial:
    raise FusionError(
        f"the score files cover other videos ({', '.join(map(str, map(len, videos)))} "
        f"videos, {len(common)} shared); give the same split's scores, or "
        f"--allow_partial to fuse the shared ones")
  aligned = []
  for s in scores:
    position = {v: i for i, v in enumerate(s["video_id"].tolist())}
    order = np.array([position[v] for v in common])
    aligned.append({"label": s["label"][order], "probs": s["probs"][order]})
  labels = aligned[0]["label"]
  for a in aligned[1:]:
    if not np.array_equal(a["label"], labels):
      raise FusionError("the score files disagree on the labels of shared videos")
  fused = sum(w * a["probs"] for w, a in zip(weights, aligned))
  return {
      "num_videos": len(common),
      "stream_video_accuracy": [float(np.mean(a["probs"].argmax(-1) == labels))
                                for a in aligned],
      "fused_video_accuracy": float(np.mean(fused.argmax(-1) == labels)),
      "weights": [float(w) for w in weights],
      "videos_left_out": left_out,
  }


FLAGS = flags.FLAGS


def define_flags():
  """Command-line flags (defined only when run as a program, so importing this
  module next to other CLIs defines nothing)."""
  flags.DEFINE_list("scores", None, "Comma-separated eval_scores.npz files.")
  flags.DEFINE_list("weights", None, "One weight per file (default: all 1).")
  flags.DEFINE_string("out", None, "Optional JSON file for the result.")
  flags.DEFINE_bool("allow_partial", False, "Fuse the videos the files share when "
                    "they cover other videos (each stream's accuracy is then on "
                    "those videos only).")


def main(argv):
  del argv
  if not FLAGS.scores:
    raise app.UsageError("--scores is required")
  try:
    weights = parse_weights(FLAGS.weights or ["1"] * len(FLAGS.scores))
    result = fuse([load_scores(p) for p in FLAGS.scores], weights,
                  allow_partial=FLAGS.allow_partial)
  except FusionError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  for path, acc, left_out in zip(FLAGS.scores, result["stream_video_accuracy"],
                                 result["videos_left_out"]):
    print(f"{path}: video accuracy {acc:.4f}"
          + (f" ({left_out} of its videos left out)" if left_out else ""))
  print(f"fused (weights {result['weights']}): video accuracy "
        f"{result['fused_video_accuracy']:.4f} on {result['num_videos']} videos")
  if FLAGS.out:
    try:
      files.write_bytes(FLAGS.out, json.dumps(result, indent=1).encode())
    except OSError as e:
      print(f"error: cannot write --out={FLAGS.out}: {e.strerror or e}", file=sys.stderr)
      sys.exit(1)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=flag_parsing.parse)
