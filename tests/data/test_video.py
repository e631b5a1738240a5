"""Decoding: frame selection by stride or rate."""

import numpy as np

from grurcn_jax.data import video
from tests.data.fake import encode_video


def test_fps_counts_time_from_the_first_frame(tmp_path):
  """A stream may start at any time: one presented from 2 s on keeps frames
  0.2 s apart at --fps=5, as one from 0 s does (not every frame until 2 s worth
  were taken)."""
  for start_s in (0.0, 2.0):
    path = str(tmp_path / f"start_{start_s}.mp4")
    encode_video(path, num_frames=12, seed=0, start_s=start_s)
    frames, indices = video.decode(path, fps=5)
    np.testing.assert_array_equal(indices, [0, 5, 10])
    assert frames.shape == (3, 32, 40, 3)
