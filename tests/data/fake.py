"""Small feature directories written straight through the format (no VGG-16), and
tiny encoded videos."""

import fractions

import av
import numpy as np

from grurcn_jax.data import features
from configs import default

LEVEL_SHAPES = {"pool4": (2, 2, 3), "fc7": (5,)}


def data_config(directory, **fields):
  """The default config's data subtree, reading `directory`."""
  data = default.get_config().data
  data.dir = str(directory)
  data.update(fields)
  return data


FRAME_SHAPE = (32, 32, 3)


def smooth_frames(rng, n):
  """[n, 32, 32, 3] uint8 images JPEG compresses well: gradients and a disc."""
  y, x = np.mgrid[0:32, 0:32] / 31.0
  out = np.empty((n, *FRAME_SHAPE), np.uint8)
  for i in range(n):
    cy, cx, tint = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0, 1, 3)
    disc = ((y - cy) ** 2 + (x - cx) ** 2 < 0.04).astype(float)
    image = 0.5 * x[..., None] * tint + 0.3 * y[..., None] + 0.2 * disc[..., None]
    out[i] = np.clip(image * 255, 0, 255).astype(np.uint8)
  return out


def write_fake_features(directory, *, videos_per_split=None, videos_per_shard=3,
                        frames=lambda i: 4 + i % 5, num_classes=3, seed=0,
                        int8_levels=(), frames_jpeg_quality=None):
  """Writes splits of random videos; returns {split: [VideoFeatures]} (the values
  as written: float16, before any int8 quantisation). With `frames_jpeg_quality`
  (0: raw) the directory also holds frames (`smooth_frames`)."""
  videos_per_split = videos_per_split or {"train": 10, "test": 7}
  rng = np.random.default_rng(seed)
  stats = {level: {"mean": [0.0] * shape[-1], "scale": 1.0, "int8_step": 4.0 / 127}
           for level, shape in LEVEL_SHAPES.items()}
  metadata = features.new_metadata(levels=LEVEL_SHAPES, stats=stats,
                                   class_names=[f"c{i}" for i in range(num_classes)],
                                   backbone={"name": "fake"}, extraction={},
                                   int8_levels=int8_levels,
                                   frames_shape=(None if frames_jpeg_quality is None
                                                 else FRAME_SHAPE),
                                   frames_jpeg_quality=frames_jpeg_quality or 0)
  written = {}
  for split, count in videos_per_split.items():
    videos = []
    for i in range(count):
      n = frames(i)
      values = {level: rng.standard_normal((n,) + shape).astype(np.float16)
                for level, shape in LEVEL_SHAPES.items()}
      if frames_jpeg_quality is not None:
        values[features.FRAMES] = smooth_frames(rng, n)
      videos.append(features.VideoFeatures(
          video_id=f"{split}/v{i:03d}", video_index=i, label=i % num_classes,
          frame_indices=np.arange(n) * 2, features=values))
    for index, start in enumerate(range(0, count, videos_per_shard)):
      entry = features.write_shard(str(directory), features.shard_name(split, index),
                                   videos[start:start + videos_per_shard], metadata)
      features.record_shard(metadata, split, entry)
    written[split] = videos
  features.write_metadata(str(directory), metadata)
  return written


def encode_video(path, num_frames, seed, start_s=0.0):
  """Random 25 fps frames; with `start_s`, the first one is presented at that time
  (an .mp4 keeps it; .avi does not)."""
  rng = np.random.default_rng(seed)
  with av.open(path, mode="w") as container:
    stream = container.add_stream("mpeg4", rate=25)
    stream.width, stream.height, stream.pix_fmt = 40, 32, "yuv420p"
    for i in range(num_frames):
      image = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)
      frame = av.VideoFrame.from_ndarray(image, format="rgb24")
      if start_s:
        frame.pts, frame.time_base = round(start_s * 25) + i, fractions.Fraction(1, 25)
      for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
