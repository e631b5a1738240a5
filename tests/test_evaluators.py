"""The evaluator checks its split when it is built, and --mode=eval needs only it."""

import os

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
