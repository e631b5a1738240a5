"""Optical flow: each installed algorithm recovers a known sub-pixel translation,
quantisation round-trips, windows stack as the flow network expects, and TSN
flow folders import."""

import numpy as np
import pytest
from PIL import Image

from grurcn_jax.data import flow
from grurcn_jax.errors import ConfigError, VideoDecodeError

INSTALLED = [a for a in flow.ALGORITHMS if flow.available(a)]


def translated_pair(shift_xy, size=96, seed=0):
  """A smooth random texture and the same texture moved by shift_xy pixels (x
  right, y down), both as [2, size, size, 3] uint8 frames. The shift is exact
  (Fourier shift theorem on a periodic texture), sub-pixel included."""
  rng = np.random.default_rng(seed)
  fy, fx = np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size), indexing="ij")
  spectrum = np.fft.fft2(rng.normal(size=(size, size))) * np.exp(
      -(fx ** 2 + fy ** 2) / (2 * 0.06 ** 2))           # low-pass: blobs of ~4 px
  def image(dx, dy):
    moved = np.real(np.fft.ifft2(spectrum * np.exp(-2j * np.pi * (fx * dx + fy * dy))))
    return moved
  a, b = image(0, 0), image(*shift_xy)
  low, high = a.min(), a.max()
  to_uint8 = lambda x: np.clip(np.round((x - low) / (high - low) * 200 + 28), 0, 255)
  frames = np.stack([to_uint8(a), to_uint8(b)]).astype(np.uint8)
  return np.repeat(frames[..., None], 3, axis=-1)


def test_at_least_the_fast_algorithms_are_installed_for_the_tests():
  # The test extra installs OpenCV; without it the flow tests below would test nothing.
  assert "dis" in INSTALLED and "farneback" in INSTALLED


@pytest.mark.parametrize("algorithm", INSTALLED)
@pytest.mark.parametrize("shift", [(1.6, -0.7), (-2.3, 1.25)])
def test_flow_recovers_a_subpixel_translation(algorithm, shift):
  frames = translated_pair(shift)
  computed = flow.video_flow(frames, algorithm)
  assert computed.shape == (1, 96, 96, 2) and computed.dtype == np.float32
  interior = computed[0, 16:-16, 16:-16].reshape(-1, 2)
  np.testing.assert_allclose(np.median(interior, axis=0), shift, atol=0.25)


def test_quantisation_round_trips_within_one_step_and_clips_at_the_bound():
  rng = np.random.default_rng(1)
  values = rng.uniform(-19.99, 19.99, size=(1000, 2)).astype(np.float32)
  for bound in (20.0, 8.0):
    inside = np.clip(values, -bound, bound)
    stored = flow.quantize(values, bound)
    assert stored.dtype == np.uint8
    step = 2 * bound / 255
    assert np.max(np.abs(flow.dequantize(stored, bound) - inside)) <= step / 2 + 1e-5
  assert list(flow.quantize(np.array([-50.0, -20.0, 0.0, 20.0, 50.0]))) == [
      0, 0, 128, 255, 255]


def test_windows_stack_x_then_y_per_flow_and_repeat_the_last_at_the_end():
  flows = np.arange(4 * 1 * 1 * 2).reshape(4, 1, 1, 2)     # flow t: (2t, 2t + 1)
  windows = flow.stack_windows(flows, 3)
  assert windows.shape == (4, 1, 1, 6)
  assert list(windows[0, 0, 0]) == [0, 1, 2, 3, 4, 5]     # x1, y1, x2, y2, x3, y3
  # Past the end the last flow repeats: wrapping would put the video's first
  # motion after its last.
  assert list(windows[2, 0, 0]) == [4, 5, 6, 7, 6, 7]     # flows 2, 3, 3
  assert list(windows[3, 0, 0]) == [6, 7, 6, 7, 6, 7]     # flows 3, 3, 3
  # Chosen windows alone: the same as those of all of them.
  np.testing.assert_array_equal(flow.stack_windows(flows, 3, np.array([1, 3])),
                                windows[[1, 3]])


def test_flow_frames_of_the_tsn_layout_import(tmp_path):
  rng = np.random.default_rng(2)
  stored = rng.integers(100, 156, size=(3, 24, 32, 2)).astype(np.uint8)
  stored[..., 0] = 128  # smooth content JPEG keeps closely
  for t in range(3):
    for axis, channel in (("x", 0), ("y", 1)):
      Image.fromarray(stored[t, ..., channel]).save(
          tmp_path / f"flow_{axis}_{t + 1:05d}.jpg", quality=100)
  read = flow.read_flow_frames(str(tmp_path))
  assert read.shape == (3, 24, 32, 2) and read.dtype == np.uint8
  # JPEG at quality 100 moves a grey level by a few steps at most.
  assert np.max(np.abs(read.astype(int) - stored)) <= 4
  np.testing.assert_array_equal(read[..., 0], 128)
  (tmp_path / "flow_y_00003.jpg").unlink()
  with pytest.raises(VideoDecodeError, match="in pairs"):
    flow.read_flow_frames(str(tmp_path))
  with pytest.raises(VideoDecodeError, match="no such flow folder"):
    flow.read_flow_frames(str(tmp_path / "none"))


def test_bad_settings_and_too_short_videos_are_clear_errors():
  with pytest.raises(ConfigError, match="choose one of dis, farneback, tvl1"):
    flow.check("lk", 20.0, 10)
  with pytest.raises(ConfigError, match="positive"):
    flow.check("dis", 0.0, 10)
  with pytest.raises(VideoDecodeError, match="at least 2 frames"):
    flow.video_flow(np.zeros((1, 8, 8, 3), np.uint8), "dis")


def test_no_motion_enters_the_network_as_zero():
  # quantize stores zero flow as 128 (as TSN's flow JPEGs do); the network's
  # input centres it there.
  from grurcn_jax.models import vgg16
  still = flow.quantize(np.zeros((2, 3, 3, 2), np.float32))
  assert (still == 128).all()
  assert (np.asarray(vgg16.preprocess_flow(flow.stack_windows(still, 2))) == 0).all()
