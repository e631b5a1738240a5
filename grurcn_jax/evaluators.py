"""Evaluators: a model's parameters -> metrics and per-example scores.

An evaluator computes; it writes nothing (`writers.py` turns its result into files
and TensorBoard scalars), so another task adds an evaluator, not a branch.

`ClassificationEvaluator` (action recognition): video-level predictions average
the class probabilities of a video's `data.eval_clips` evenly spaced clips (per
level, and of the level-averaged prediction). Its metrics: step, loss (mean eval
cross-entropy), video_accuracy, clip_accuracy, num_videos, num_clips,
per_level_video_accuracy, per_level_clip_accuracy (and skipped_records when
`data.skip_bad_records` skipped any). Its scores, per video (for score fusion,
`grurcn_jax.fuse`): video_index, video_id, label, probs [V, K], level_probs
[V, L, K], levels, class_names, step. Its figure: the video-level confusion matrix.

`CaptioningEvaluator` (captioning): every eval video's caption, decoded by beam
search (`caption.beam_size`; 1: greedy) and scored against its references with the
coco-caption metrics (`caption_metrics`). Its metrics: step, num_videos, bleu_1..4,
meteor (None without Java), rouge_l, cider; on the captioning demo also
motion_accuracy (the share of videos whose motion words, in order, are right).
Its documents: eval_captions.json ([{video_id, generated, references}]) and
caption_metrics.json; its texts: a few generated captions beside a reference.

`for_experiment` picks the evaluator of an experiment's task.
"""

import collections
import contextlib
import dataclasses
import io
import time
from typing import Any, Callable, Dict, List

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from grurcn_jax import checkpoints, sharding
from grurcn_jax.data import features as features_lib
from grurcn_jax.data import loaders
from grurcn_jax.errors import TrainingError
from grurcn_jax.experiment import Experiment
from grurcn_jax.models import classification_loss


class EvaluationStopped(Exception):
  """An evaluation given up between batches because `should_stop` said so (a
  preemption notice during it)."""


@contextlib.contextmanager
def stop_on_preemption(stopped: str):
  """Yields a `should_stop` for `evaluate` outside the training loop: a
  preemption notice (SIGTERM) stops the evaluation between batches, every host at
  the same one, and it ends as TrainingError(`stopped`). A Ctrl-C interrupts it as
  usual (an evaluation has nothing to save)."""
  with checkpoints.Preemption(ctrl_c=False) as preemption:
    try:
      yield preemption.reached
    except EvaluationStopped:
      raise TrainingError(stopped) from None


@dataclasses.dataclass
class EvalResult:
  """What an evaluation found; the same on every host."""
  step: int
  metrics: Dict[str, Any]                     # JSON-able; floats also go to TensorBoard
  scores: Dict[str, np.ndarray]               # per-example arrays, saved as .npz
  figures: Dict[str, Callable[[], bytes]]     # name -> PNG renderer (called by the writer)
  documents: Dict[str, Any] = dataclasses.field(default_factory=dict)  # file -> JSON
  texts: Dict[str, str] = dataclasses.field(default_factory=dict)      # TensorBoard text
  summary: str = ""                           # one line for the log and the console


def for_experiment(experiment: Experiment):
  """The evaluator of the experiment's task."""
  if experiment.config.task == "captioning":
    return CaptioningEvaluator(experiment)
  return ClassificationEvaluator(experiment)


class ClassificationEvaluator:
  """Clip, video and per-level accuracy of a classifier on the eval split."""

  def __init__(self, experiment: Experiment):
    self.experiment = experiment
    config = experiment.config
    self._host_batch = sharding.host_batch_size(config.eval_batch_size, "eval_batch_size")
    self._levels = tuple(config.model.levels)
    self._inputs = tuple(experiment.spec.input_shapes)  # what batches hold
    self._class_names = experiment.spec.class_names
    self._video_ids = features_lib.video_ids(
        features_lib.read_metadata(config.data.dir), config.data.eval_split)
    # A missing or truncated eval file is found now, not at the first evaluation.
    self._loader = loaders.for_config(config.data, self._inputs)
    sharding.check_hosts_read_alike(config.data.eval_split, self._loader.check_split(
        config.data, config.data.eval_split, self._inputs))
    self._step = _make_eval_step(experiment)

  def evaluate(self, params, step: int, should_stop=None) -> EvalResult:
    """`should_stop()`, asked between batches: True gives up (EvaluationStopped)."""
    config = self.experiment.config
    batches = self._loader.eval_batches(config.data, batch_size=self._host_batch,
                                        levels=self._inputs,
                                        process_index=jax.process_index(),
                                        process_count=jax.process_count())
    chunks = run_over_batches(self._step, params, batches, self.experiment.mesh,
                              _eval_prefetch(config), should_stop=should_stop)
    outputs = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    valid = outputs["mask"] > 0
    outputs = {k: v[valid] for k, v in outputs.items()}
    metrics, scores = classification_metrics(outputs, self._levels, step)
    if batches.stats.skipped_records:
      metrics["skipped_records"] = batches.stats.skipped_records
    scores.update(class_names=np.array(self._class_names),
                  video_id=np.array([self._video_ids.get(int(i), str(i))
                                     for i in scores["video_index"]]))
    matrix = confusion_matrix(scores["label"], scores["probs"].argmax(-1),
                              len(self._class_names))
    figures = {"confusion_matrix": lambda: render_confusion_matrix(
        matrix, self._class_names, step)}
    levels = ", ".join(f"{k} {v:.3f}" for k, v in
                       metrics["per_level_video_accuracy"].items())
    summary = (f"video accuracy {metrics['video_accuracy']:.3f} (clip "
               f"{metrics['clip_accuracy']:.3f}, loss {metrics['loss']:.4f}; per level: "
               f"{levels}) on {metrics['num_videos']} videos at step {int(step)}")
    return EvalResult(int(step), metrics, scores, figures, summary=summary)


def _eval_prefetch(config) -> int:
  # One eval batch on its way is enough to overlap copy and compute, and training's
  # prefetched batches stay in device memory meanwhile: a run tuned close to the
  # memory limit must not fail at its first evaluation, hours in.
  return min(config.data.device_prefetch, 1)


# Seconds between the progress lines of a long evaluation.
PROGRESS_EVERY_S = 30.0


def run_over_batches(step, params, host_batches, mesh, prefetch: int, *,
                     progress_every_s: float = PROGRESS_EVERY_S,
                     should_stop=None) -> List[Any]:
  """`step(params, global batch)` of every host batch, fetched to the host one step
  behind: the next batches travel to the devices (`prefetch`, as in training) and
  the next step is dispatched before an output is waited for, so the devices do
  not idle while a batch is read, copied or an output comes back. Every
  `progress_every_s` a line says how far it is (UCF-101's test split at 25 clips
  a video is about 95,000 clips: minutes). `should_stop()`, asked before each
  batch, gives up with EvaluationStopped when True: a preemption's grace (about
  30 s on Cloud) is shorter than such an evaluation."""
  total = getattr(host_batches, "num_batches", None)
  in_flight = collections.deque()
  outputs = []
  start = last_report = time.time()

  def fetch_oldest():
    nonlocal last_report
    outputs.append(jax.device_get(in_flight.popleft()))
    now = time.time()
    if now - last_report >= progress_every_s:
      last_report = now
      done, rate = len(outputs), len(outputs) / max(now - start, 1e-9)
      eta = f", ETA {(total - done) / rate / 60:.1f} min" if total else ""
      logging.info("eval: batch %d%s, %.2f batches/s%s", done,
                   f"/{total}" if total else "", rate, eta)

  for batch in sharding.prefetch_to_device(host_batches, mesh, prefetch):
    if should_stop is not None and should_stop():
      # Every host stops at this batch (`should_stop` agrees across hosts). The
      # steps dispatched before it are in collectives with the others: finish
      # them first, or a host that left early kept another in one forever (seen
      # with --mode=eval on two processes: one hung at exit).
      jax.block_until_ready(list(in_flight))
      raise EvaluationStopped(f"stopped after {len(outputs) + len(in_flight)} batches")
    in_flight.append(step(params, batch))
    if len(in_flight) > 1:
      fetch_oldest()
  while in_flight:
    fetch_oldest()
  return outputs


def _make_eval_step(experiment: Experiment):
  model, mesh, spec = experiment.model, experiment.mesh, experiment.spec
  levels, loss_kind = tuple(experiment.config.model.levels), experiment.config.model.loss

  def eval_step(params, batch):
    out = model.apply({"params": params}, spec.dequantize(batch["features"]),
                      train=False)
    return {
        "probs": jax.nn.softmax(out["logits"]),
        "level_probs": jnp.stack([jax.nn.softmax(out["level_logits"][l]) for l in levels],
                                 axis=1),
        "loss": classification_loss(out, batch["label"], loss_kind),
        "label": batch["label"], "mask": batch["mask"],
        "video_index": batch["video_index"],
    }
  # Replicated outputs: every host gets every clip's scores (video-level averaging
  # needs all of a video's clips, which may live on any host).
  return jax.jit(eval_step,
                 in_shardings=(sharding.replicated(mesh), sharding.batch_sharding(mesh)),
                 out_shardings=sharding.replicated(mesh))


def classification_metrics(outputs: Dict[str, np.ndarray], levels, step: int):
  """Per-clip outputs (probs [N, K], level_probs [N, L, K], loss, label,
  video_index) -> (metrics, per-video scores)."""
  labels = outputs["label"]
  video_index = outputs["video_index"]
  videos, inverse = np.unique(video_index, return_inverse=True)
  counts = np.bincount(inverse)

  def per_video(probs):
    summed = np.zeros((len(videos),) + probs.shape[1:], np.float64)
    np.add.at(summed, inverse, probs)
    return summed / counts.reshape((-1,) + (1,) * (probs.ndim - 1))

  video_labels = np.zeros(len(videos), np.int64)
  video_labels[inverse] = labels
  video_probs = per_video(outputs["probs"])
  video_level_probs = per_video(outputs["level_probs"])
  metrics = {
      "step": int(step),
      "loss": float(np.mean(outputs["loss"])),
      "clip_accuracy": float(np.mean(outputs["probs"].argmax(-1) == labels)),
      "video_accuracy": float(np.mean(video_probs.argmax(-1) == video_labels)),
      "num_videos": int(len(videos)),
      "num_clips": int(len(labels)),
      "per_level_video_accuracy": {
          level: float(np.mean(video_level_probs[:, i].argmax(-1) == video_labels))
          for i, level in enumerate(levels)},
      "per_level_clip_accuracy": {
          level: float(np.mean(outputs["level_probs"][:, i].argmax(-1) == labels))
          for i, level in enumerate(levels)},
  }
  scores = {"video_index": videos, "label": video_labels, "probs": video_probs,
            "level_probs": video_level_probs, "levels": np.array(levels),
            "step": np.array(step)}
  return metrics, scores


def confusion_matrix(labels, predictions, num_classes) -> np.ndarray:
  matrix = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(matrix, (labels, predictions), 1)
  return matrix


def render_confusion_matrix(matrix: np.ndarray, class_names, step: int) -> bytes:
  """PNG bytes of a video-level confusion matrix (rows: true class)."""
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt
  n = len(class_names)
  size = min(4 + 0.25 * n, 30)
  fig, ax = plt.subplots(figsize=(size, size))
  ax.imshow(matrix, cmap="Blues")
  if n <= 40:
    ax.set_xticks(range(n), class_names, rotation=90)
    ax.set_yticks(range(n), class_names)
    for (i, j), v in np.ndenumerate(matrix):
      if v:
        ax.text(j, i, str(v), ha="center", va="center", fontsize=8,
                color="white" if v > matrix.max() / 2 else "black")
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  ax.set_title(f"video-level confusion matrix, step {step}")
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=80)
  plt.close(fig)
  return buffer.getvalue()


class CaptioningEvaluator:
  """Captions of every eval video by beam search, scored with coco-caption."""

  def __init__(self, experiment):
    self.experiment = experiment
    config = experiment.config
    from grurcn_jax import caption_metrics
    caption_metrics.check_installed()   # now, not at the first evaluation
    self._host_batch = sharding.host_batch_size(config.eval_batch_size, "eval_batch_size")
    self._inputs = tuple(experiment.spec.input_shapes)
    metadata = features_lib.read_metadata(config.data.dir)
    self._video_ids = features_lib.video_ids(metadata, config.data.eval_split)
    from grurcn_jax.data import captions
    self._references = captions.references_by_id(experiment.references,
                                                 self._video_ids.values())
    self._is_demo = metadata.get("extraction", {}).get("source") == "demo_captions"
    self._loader = loaders.for_config(config.data, self._inputs)
    sharding.check_hosts_read_alike(config.data.eval_split, self._loader.check_split(
        config.data, config.data.eval_split, self._inputs))
    self._decode = _make_decode_step(experiment)

  def evaluate(self, params, step: int, should_stop=None) -> EvalResult:
    """`should_stop()`, asked between batches: True gives up (EvaluationStopped)."""
    config = self.experiment.config
    batches = self._loader.caption_eval_batches(
        config.data, segments=config.caption.segments, batch_size=self._host_batch,
        levels=self._inputs, process_index=jax.process_index(),
        process_count=jax.process_count())
    chunks = run_over_batches(self._decode, params, batches, self.experiment.mesh,
                              _eval_prefetch(config), should_stop=should_stop)
    tokens = np.concatenate([c["tokens"] for c in chunks])
    video_index = np.concatenate([c["video_index"] for c in chunks])
    valid = np.concatenate([c["mask"] for c in chunks]) > 0
    vocabulary = self.experiment.vocabulary
    generated = {self._video_ids[int(i)]: vocabulary.decode(t)
                 for i, t in zip(video_index[valid], tokens[valid])}
    from grurcn_jax import caption_metrics
    references = self._references
    if batches.stats.skipped_records:  # scored on the videos that could be read
      references = {v: references[v] for v in generated}
    metrics = {"step": int(step), **caption_metrics.score(references, generated)}
    if self._is_demo:
      from grurcn_jax.data import demo_captions
      metrics["motion_accuracy"] = demo_captions.motion_accuracy(generated,
                                                                 self._references)
    if batches.stats.skipped_records:
      metrics["skipped_records"] = batches.stats.skipped_records
    ids = sorted(generated)
    captions_doc = [{"video_id": v, "generated": generated[v],
                     "references": self._references[v]} for v in ids]
    samples = "\n\n".join(
        f"**{v}**: {generated[v]}  \n(reference: {self._references[v][0]})"
        for v in ids[:config.caption.eval_samples])
    meteor = "n/a" if metrics["meteor"] is None else f"{metrics['meteor']:.3f}"
    summary = (f"BLEU-4 {metrics['bleu_4']:.3f}, METEOR {meteor}, CIDEr "
               f"{metrics['cider']:.3f}, ROUGE-L {metrics['rouge_l']:.3f}"
               + (f", motion words right {metrics['motion_accuracy']:.3f}"
                  if "motion_accuracy" in metrics else "")
               + f" on {metrics['num_videos']} videos at step {int(step)}")
    return EvalResult(int(step), metrics, {}, {},
                      documents={"eval_captions.json": captions_doc,
                                 "caption_metrics.json": metrics},
                      texts={"eval/captions": samples} if samples else {},
                      summary=summary)


def _make_decode_step(experiment):
  from grurcn_jax.models import decoding
  model, mesh, spec = experiment.model, experiment.mesh, experiment.spec
  caption, vocabulary = experiment.config.caption, experiment.vocabulary

  def decode(params, batch):
    variables = {"params": params}
    segments = model.apply(variables, spec.dequantize(batch["features"]),
                           method="segments")
    state, projected = model.apply(variables, segments, method="start")

    def step(decoder_state, tokens, shared):
      segments, projected = shared   # a video's: the same for each of its beams
      decoder_state, log_probs, _ = model.apply(variables, decoder_state, tokens,
                                                segments, projected, method="step")
      return log_probs, decoder_state

    options = dict(bos=vocabulary.bos, eos=vocabulary.eos,
                   max_length=caption.max_length,
                   banned=vocabulary.never_generated(caption.allow_unk),
                   shared=(segments, projected))
    size = segments.shape[0]
    if caption.beam_size == 1:
      tokens, _ = decoding.greedy(step, state, size, **options)
    else:
      tokens, _ = decoding.beam_search(step, state, size, beam=caption.beam_size,
                                       **options)
    return {"tokens": tokens, "video_index": batch["video_index"], "mask": batch["mask"]}

  return jax.jit(decode,
                 in_shardings=(sharding.replicated(mesh), sharding.batch_sharding(mesh)),
                 out_shardings=sharding.replicated(mesh))
