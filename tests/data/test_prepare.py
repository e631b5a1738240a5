"""The demo a config asks for: built once, finished when interrupted, and every
host meets the others at the barrier."""

import os

import jax
from jax.experimental import multihost_utils
import pytest

from grurcn_jax.data import convert, demo, features, prepare
from grurcn_jax.errors import ConfigError
from tests.data.fake import write_fake_features

# 8 videos per split, 2 shards of 4 each.
TINY = dict(train_per_class=1, test_per_class=1, num_frames=2, image_size=32,
            levels=("pool2",), videos_per_shard=4, store_frames=False)


class Interrupted(Exception):
  pass


def test_a_build_interrupted_after_its_first_shard_is_finished(tmp_path, monkeypatch):
  data = {"demo": TINY, "dir": str(tmp_path)}
  write_shard, written = features.write_shard, []

  def first_shard_only(directory, name, *args, **kwargs):
    if written:
      raise Interrupted(name)
    written.append(name)
    return write_shard(directory, name, *args, **kwargs)

  monkeypatch.setattr(features, "write_shard", first_shard_only)
  with pytest.raises(Interrupted):
    prepare.ensure_demo(data, progress=False)
  # metadata.json is there from the first shard on; one split is not.
  assert len(features.read_metadata(str(tmp_path))["splits"]) == 1

  monkeypatch.setattr(features, "write_shard", write_shard)
  prepare.ensure_demo(data, progress=False)
  metadata = features.read_metadata(str(tmp_path))
  assert {split: metadata["splits"].get(split, {}).get("num_videos")
          for split in ("train", "test")} == {"train": 8, "test": 8}

  # Complete now: a later run builds nothing.
  monkeypatch.setattr(demo, "build", lambda *args, **kwargs: pytest.fail("rebuilt"))
  prepare.ensure_demo(data, progress=False)


def test_a_complete_demo_built_with_other_settings_is_used_with_a_warning(tmp_path,
                                                                         monkeypatch):
  """A config asking for 3-frame videos trained on the 2-frame ones already there
  without a word. It still uses them (a config pointed at another demo's
  directory), and says which settings differ."""
  from absl import logging
  warnings = []
  monkeypatch.setattr(logging, "warning", lambda message, *args: warnings.append(
      message % args))
  data = {"demo": TINY, "dir": str(tmp_path)}
  prepare.ensure_demo(data, progress=False)
  monkeypatch.setattr(demo, "build", lambda *args, **kwargs: pytest.fail("rebuilt"))
  prepare.ensure_demo(data, progress=False)   # its own settings: nothing said
  assert warnings == []
  prepare.ensure_demo(dict(data, demo=dict(TINY, num_frames=3, image_size=48)),
                      progress=False)
  assert len(warnings) == 1
  assert ("holds a demo built with other data.demo settings (image_size: 32 there, 48 "
          "in the config; num_frames: 2 there, 3 in the config): it is used as it is"
          in warnings[0]), warnings


def test_a_demo_is_not_built_among_other_files(tmp_path, monkeypatch):
  """A demo config given another run's workdir (or any folder of other files) as
  data.dir built the demo there, beside its checkpoints."""
  workdir = tmp_path / "run"
  (workdir / "checkpoints").mkdir(parents=True)
  (workdir / "eval_metrics.json").write_text("{}")
  monkeypatch.setattr(demo, "build", lambda *args, **kwargs: pytest.fail("built"))
  with pytest.raises(ConfigError, match=r"data.dir .*run holds other files \(checkpoints, "
                                        r"eval_metrics.json\) and no demo: the demo is "
                                        r"built into a new or empty directory"):
    prepare.ensure_demo({"demo": TINY, "dir": str(workdir)}, progress=False)
  assert sorted(os.listdir(workdir)) == ["checkpoints", "eval_metrics.json"]
  # Finder's .DS_Store, or a first metadata write cut short by a kill: a demo's
  # directory still.
  built = []
  monkeypatch.setattr(demo, "build", lambda directory, *args, **kwargs:
                      built.append(directory))
  fresh = tmp_path / "fresh"
  fresh.mkdir()
  (fresh / ".DS_Store").write_bytes(b"")
  (fresh / "metadata.json.tmp-123").write_text("{")
  prepare.ensure_demo({"demo": TINY, "dir": str(fresh)}, progress=False)
  assert built == [str(fresh)]


def test_every_host_meets_at_the_barrier_whatever_it_sees(tmp_path, monkeypatch):
  """Host 1 of 2, beside a directory with nothing and one with metadata.json: it
  builds nothing and reaches the barrier process 0 reaches after building."""
  barriers = []
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  monkeypatch.setattr(multihost_utils, "sync_global_devices", barriers.append)
  monkeypatch.setattr(demo, "build", lambda *args, **kwargs: pytest.fail("host 1 built"))
  write_fake_features(tmp_path / "written")
  for directory in (tmp_path / "empty", tmp_path / "written"):
    barriers.clear()
    prepare.ensure_demo({"demo": TINY, "dir": str(directory)}, progress=False)
    assert barriers == ["demo dataset built"], directory
  assert not (tmp_path / "empty").exists()


def test_features_that_are_not_the_demos_own_build_are_used_as_they_are(tmp_path,
                                                                        monkeypatch):
  # A demo config pointed at the demo converted to int8 (the README's command), or
  # at the benchmark's synthetic features: nothing to build there.
  data = {"demo": TINY, "dir": str(tmp_path / "demo")}
  prepare.ensure_demo(data, progress=False)
  convert.convert(data["dir"], str(tmp_path / "int8"), int8_levels=("pool2",))
  write_fake_features(tmp_path / "other")
  monkeypatch.setattr(demo, "build", lambda *args, **kwargs: pytest.fail("built"))
  for name in ("int8", "other"):
    prepare.ensure_demo(dict(data, dir=str(tmp_path / name)), progress=False)
