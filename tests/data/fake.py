"""Small feature directories written straight through the format (no VGG-16)."""

import numpy as np

from grurcn_jax.data import features

LEVEL_SHAPES = {"pool4": (2, 2, 3), "fc7": (5,)}


def write_fake_features(directory, *, videos_per_split=None, videos_per_shard=3,
                        frames=lambda i: 4 + i % 5, num_classes=3, seed=0,
                        int8_levels=()):
  """Writes splits of random videos; returns {split: [VideoFeatures]} (the values
  as written: float16, before any int8 quantisation)."""
  videos_per_split = videos_per_split or {"train": 10, "test": 7}
  rng = np.random.default_rng(seed)
  stats = {level: {"mean": [0.0] * shape[-1], "scale": 1.0, "int8_step": 4.0 / 127}
           for level, shape in LEVEL_SHAPES.items()}
  metadata = features.new_metadata(levels=LEVEL_SHAPES, stats=stats,
                                   class_names=[f"c{i}" for i in range(num_classes)],
                                   backbone={"name": "fake"}, extraction={},
                                   int8_levels=int8_levels)
  written = {}
  for split, count in videos_per_split.items():
    videos = []
    for i in range(count):
      n = frames(i)
      videos.append(features.VideoFeatures(
          video_id=f"{split}/v{i:03d}", video_index=i, label=i % num_classes,
          frame_indices=np.arange(n) * 2,
          features={level: rng.standard_normal((n,) + shape).astype(np.float16)
                    for level, shape in LEVEL_SHAPES.items()}))
    for index, start in enumerate(range(0, count, videos_per_shard)):
      entry = features.write_shard(str(directory), features.shard_name(split, index),
                                   videos[start:start + videos_per_shard], metadata)
      features.record_shard(metadata, split, entry)
    written[split] = videos
  features.write_metadata(str(directory), metadata)
  return written
