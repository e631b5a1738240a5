"""The evaluator checks its split when it is built, and --mode=eval needs only it."""

import os

import numpy as np
import pytest

from configs import default
from grurcn_jax import evaluators
from grurcn_jax.data.prepare import FeatureSpec
from grurcn_jax.errors import FeatureFormatError
from grurcn_jax.experiment import assemble
from tests.data.fake import write_fake_features


def fake_config(directory):
  config = default.get_config()
  config.data.dir, config.data.clip_length = str(directory), 2
  config.model.levels, config.model.hidden = ("pool4", "fc7"), (2, 2)
  config.model.num_classes, config.batch_size, config.eval_batch_size = 3, 8, 8
  return config


def test_a_bad_eval_file_is_found_before_training(tmp_path):
  write_fake_features(tmp_path)
  experiment = assemble(fake_config(tmp_path))
  evaluators.ClassificationEvaluator(experiment)  # fine as written
  path = tmp_path / "test-00001.fc7"
  with open(path, "rb+") as f:
    f.truncate(os.path.getsize(path) - 2)
  with pytest.raises(FeatureFormatError, match="test-00001.fc7 is truncated"):
    evaluators.ClassificationEvaluator(experiment)


def test_eval_needs_only_the_eval_split(tmp_path):
  write_fake_features(tmp_path, videos_per_split={"test": 4})
  config = fake_config(tmp_path)
  with pytest.raises(FeatureFormatError, match="split 'train' is not in the features"):
    assemble(config)
  spec = assemble(config, splits=("test",)).spec
  assert spec == FeatureSpec.from_directory(config.data, config.model, ("test",))
  assert spec.num_classes == 3 and spec.level_shapes == {"pool4": (2, 2, 3),
                                                         "fc7": (5,)}


def test_an_eval_split_of_no_readable_video_is_a_clear_error(tmp_path):
  write_fake_features(tmp_path, videos_per_split={"train": 3, "test": 3})
  config = fake_config(tmp_path)
  config.data.skip_bad_records = True
  experiment = assemble(config)
  path = tmp_path / "test-00000.fc7"   # the split's one shard
  with open(path, "rb+") as f:
    f.truncate(os.path.getsize(path) - 2)
  with pytest.raises(FeatureFormatError, match=r"split 'test' of .* has no readable videos"):
    evaluators.ClassificationEvaluator(experiment)


class _FirstVideoSkipped:
  """Eval batches as the loader gives them, with the first video left out and
  counted as a skipped record (what data.skip_bad_records does to a bad shard)."""

  def __init__(self, batches):
    self._batches, self.stats = batches, batches.stats
    self.stats.skipped_records = 1

  def __iter__(self):
    for i, batch in enumerate(self._batches):
      if i == 0:
        batch = dict(batch, mask=batch["mask"] * (np.arange(len(batch["mask"])) > 0))
      yield batch


def test_captioning_scores_the_videos_read_when_records_are_skipped(tiny_captions_dir,
                                                                     monkeypatch):
  from grurcn_jax import caption_metrics
  from tests.training_setup import tiny_captioning_config
  monkeypatch.setattr(caption_metrics, "java_available", lambda: False)
  config = tiny_captioning_config(tiny_captions_dir, caption__encoder="first_frame",
                                  data__skip_bad_records=True)
  experiment = assemble(config)
  evaluator = evaluators.CaptioningEvaluator(experiment)
  real = evaluator._loader.caption_eval_batches
  monkeypatch.setattr(evaluator._loader, "caption_eval_batches",
                      lambda *a, **k: _FirstVideoSkipped(real(*a, **k)))
  result = evaluator.evaluate(experiment.init_state().params, 0)
  assert result.metrics["num_videos"] == 3 and result.metrics["skipped_records"] == 1


def test_eval_batches_travel_and_steps_run_ahead_of_the_outputs_fetched(monkeypatch):
  """The devices get the next batches and the next step before an output is waited
  for: each step is dispatched with `prefetch` batches taken beyond its own, and
  an output is fetched only once the step after it is dispatched."""
  import jax
  from grurcn_jax import sharding
  mesh = sharding.make_mesh()
  taken, events = [0], []

  def host_batches():
    for i in range(5):
      taken[0] += 1
      yield {"x": np.full([8], i, np.float32)}

  def step(params, batch):
    events.append(("step", taken[0]))
    return {"x": batch["x"] * params}

  device_get = jax.device_get

  def fetched(tree):
    events.append(("get", len([e for e in events if e[0] == "step"])))
    return device_get(tree)

  monkeypatch.setattr(jax, "device_get", fetched)
  outputs = evaluators.run_over_batches(step, 2.0, host_batches(), mesh, prefetch=2)
  assert [o["x"].tolist() for o in outputs] == [[2.0 * i] * 8 for i in range(5)]
  steps = [n for kind, n in events if kind == "step"]
  assert steps == [2, 3, 4, 5, 5]   # own batch + the next one(s) already taken
  # The output of step k is fetched after step k + 1 was dispatched (the last ones
  # at the end, together).
  assert events.index(("get", 2)) > events.index(("step", 3))
  assert [e for e in events if e[0] == "get"] == [("get", 2), ("get", 3), ("get", 4),
                                                  ("get", 5), ("get", 5)]


@pytest.mark.parametrize("allow_unk", [False, True])
def test_generated_captions_hold_no_unk_unless_allowed(tiny_captions_dir, monkeypatch,
                                                        allow_unk):
  import jax
  from grurcn_jax import caption_metrics
  from tests.training_setup import tiny_captioning_config
  monkeypatch.setattr(caption_metrics, "java_available", lambda: False)
  config = tiny_captioning_config(tiny_captions_dir, caption__encoder="first_frame",
                                  caption__allow_unk=allow_unk)
  experiment = assemble(config)
  params = jax.device_get(experiment.init_state().params)
  # A decoder that writes <unk> above all else (then <eos>).
  unk, eos = experiment.vocabulary.words.index("<unk>"), experiment.vocabulary.eos
  out_logits = params["decoder"]["out_logits"]
  out_logits["bias"] = bias = np.array(out_logits["bias"])
  bias[unk], bias[eos] = 50.0, 25.0
  result = evaluators.CaptioningEvaluator(experiment).evaluate(params, 0)
  generated = [c["generated"] for c in result.documents["eval_captions.json"]]
  assert generated
  if allow_unk:
    assert all(caption.split()[0] == "<unk>" for caption in generated)
  else:
    assert all("<unk>" not in caption.split() for caption in generated)


def test_a_long_evaluation_says_how_far_it_is(caplog):
  import logging
  from grurcn_jax import sharding

  class Batches:
    num_batches = 3

    def __iter__(self):
      return iter([{"x": np.full([8], i, np.float32)} for i in range(3)])

  with caplog.at_level(logging.INFO):
    outputs = evaluators.run_over_batches(lambda p, b: b, None, Batches(),
                                          sharding.make_mesh(), prefetch=1,
                                          progress_every_s=0)
  assert len(outputs) == 3
  lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("eval:")]
  assert [line.split(",")[0] for line in lines] == [
      "eval: batch 1/3", "eval: batch 2/3", "eval: batch 3/3"]
  assert lines[0].endswith(" min") and "batches/s, ETA" in lines[0]


def test_captioning_without_its_scorers_fails_when_built_not_at_the_first_evaluation(
    tiny_captions_dir, monkeypatch):
  import sys
  from grurcn_jax.errors import ConfigError
  from tests.training_setup import tiny_captioning_config
  monkeypatch.setitem(sys.modules, "pycocoevalcap.bleu.bleu", None)   # not installed
  experiment = assemble(tiny_captioning_config(tiny_captions_dir,
                                               caption__encoder="first_frame"))
  with pytest.raises(ConfigError, match=r"caption metrics need pycocoevalcap: pip "
                                        r"install 'grurcn_jax\[captioning\]'"):
    evaluators.CaptioningEvaluator(experiment)


def test_video_scores_average_clip_probabilities_not_clip_votes():
  # Four clips, two videos, two levels, three classes; the numbers written out.
  # Video 7 (class 0): two clips lean to 0, one is sure of 2. Their votes say 0; the
  # mean of their probabilities (the test protocol this project follows) says 2.
  level_probs = np.array([
      [[0.52, 0.00, 0.48], [0.51, 0.00, 0.49]],   # video 7, clip a (pool4, fc7)
      [[0.60, 0.00, 0.40], [0.42, 0.00, 0.58]],   # video 7, clip b
      [[0.00, 0.00, 1.00], [0.00, 0.20, 0.80]],   # video 7, clip c
      [[0.20, 0.70, 0.10], [0.60, 0.30, 0.10]],   # video 3 (class 1), its one clip
  ])
  # Clips (mean of levels): a (0.515, 0, 0.485) -> 0, b (0.51, 0, 0.49) -> 0,
  # c (0, 0.1, 0.9) -> 2, video 3's (0.4, 0.5, 0.1) -> 1.
  outputs = {"probs": level_probs.mean(1), "level_probs": level_probs,
             "loss": np.array([1.0, 2.0, 3.0, 6.0]), "label": np.array([0, 0, 0, 1]),
             "video_index": np.array([7, 7, 7, 3])}
  metrics, scores = evaluators.classification_metrics(outputs, ("pool4", "fc7"), 40)
  np.testing.assert_array_equal(scores["video_index"], [3, 7])
  np.testing.assert_array_equal(scores["label"], [1, 0])
  np.testing.assert_allclose(scores["probs"], [[0.4, 0.5, 0.1],
                                               [1.025 / 3, 0.1 / 3, 1.875 / 3]],
                             rtol=1e-12)
  assert metrics["video_accuracy"] == 0.5        # video 3 right; video 7 says 2
  assert metrics["clip_accuracy"] == 0.75        # clips a, b and video 3's
  # pool4: video 7 (0.373, 0, 0.627) -> 2, video 3 -> 1; fc7: video 7 (0.31,
  # 0.067, 0.623) -> 2, video 3 (0.6, 0.3, 0.1) -> 0.
  assert metrics["per_level_video_accuracy"] == {"pool4": 0.5, "fc7": 0.0}
  # pool4: a, b, video 3's right; fc7: a only (b 0.58 and c 0.8 on class 2).
  assert metrics["per_level_clip_accuracy"] == {"pool4": 0.75, "fc7": 0.25}
  assert metrics["loss"] == 3.0 and metrics["step"] == 40
  assert (metrics["num_videos"], metrics["num_clips"]) == (2, 4)
  # Rows: the true class; columns: the prediction.
  matrix = evaluators.confusion_matrix(scores["label"], scores["probs"].argmax(-1), 3)
  np.testing.assert_array_equal(matrix, [[0, 0, 1], [0, 1, 0], [0, 0, 0]])
