"""Decoding: frame selection by stride or rate, rotation, broken files, resizing."""

import fractions
import struct

import av
import numpy as np
import pytest

from grurcn_jax.data import video
from grurcn_jax.errors import VideoDecodeError
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


def encode_at(path, times_s, image=None):
  """An .mp4 whose frames are presented at `times_s` (1/25 s units)."""
  with av.open(path, mode="w") as container:
    stream = container.add_stream("mpeg4", rate=25)
    stream.width, stream.height, stream.pix_fmt = 40, 32, "yuv420p"
    for t in times_s:
      frame = av.VideoFrame.from_ndarray(
          np.zeros((32, 40, 3), np.uint8) if image is None else image, format="rgb24")
      frame.pts, frame.time_base = round(t * 25), fractions.Fraction(1, 25)
      for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def test_fps_takes_one_frame_a_slot_and_leaves_a_gap_empty(tmp_path):
  # 25 frames from 0 s, then none until 5 s, then 50 more: at --fps=1 the frames
  # at 0, 5 and 6 s; counting frames taken took 5.00-5.16 s as well.
  path = str(tmp_path / "gap.mp4")
  encode_at(path, [i / 25 for i in range(25)] + [5 + i / 25 for i in range(50)])
  _, indices = video.decode(path, fps=1)
  np.testing.assert_array_equal(indices, [0, 25, 50])


def test_a_rotated_video_is_decoded_as_it_is_shown(tmp_path):
  # Phones store portrait video sideways with a display matrix; a player turns it.
  image = np.zeros((32, 40, 3), np.uint8)
  image[:, :20] = 255   # left half white
  path = tmp_path / "rotated.mp4"
  encode_at(str(path), [i / 25 for i in range(3)], image)
  data = bytearray(path.read_bytes())
  at = data.index(b"tkhd") + 4
  assert data[at] == 0   # version 0: the matrix is 40 bytes on
  # Shown turned 90 degrees clockwise (ffmpeg's rotate=90): [0 1 0; -1 0 0; 0 0 1].
  data[at + 40:at + 76] = struct.pack(">9i", 0, 0x10000, 0, -0x10000, 0, 0, 0, 0,
                                      0x40000000)
  path.write_bytes(bytes(data))
  frames, _ = video.decode(str(path))
  assert frames.shape == (3, 40, 32, 3)
  # The left half, turned clockwise, is the top half.
  assert frames[:, :16].mean() > 200 and frames[:, 24:].mean() < 50


def test_upright_turns_by_the_display_rotation():
  image = np.arange(6).reshape(2, 3)
  np.testing.assert_array_equal(video.upright(image, 0), image)
  np.testing.assert_array_equal(video.upright(image, -90), [[3, 0], [4, 1], [5, 2]])
  np.testing.assert_array_equal(video.upright(image, 90), [[2, 5], [1, 4], [0, 3]])
  np.testing.assert_array_equal(video.upright(image, 180), image[::-1, ::-1])


def test_a_video_that_breaks_off_keeps_the_frames_before_the_break(tmp_path, monkeypatch,
                                                                   caplog):
  path = str(tmp_path / "v.mp4")
  encode_video(path, num_frames=10, seed=0)
  real_open = av.open

  class BreakingAfterSix:
    def __init__(self, container):
      self._container = container
      self.streams = container.streams

    def __enter__(self):
      return self

    def __exit__(self, *exc):
      self._container.close()

    def decode(self, stream):
      for i, frame in enumerate(self._container.decode(stream)):
        if i == 6:
          raise av.error.InvalidDataError(1094995529, "Invalid data found")
        yield frame

  monkeypatch.setattr(video.av, "open", lambda p, *a, **k: BreakingAfterSix(real_open(p)))
  with caplog.at_level("WARNING"):
    frames, indices = video.decode(path, frame_stride=2)
  np.testing.assert_array_equal(indices, [0, 2, 4])
  assert frames.shape == (3, 32, 40, 3)
  assert "decoding broke off after 6 frames" in caplog.text   # frames 0-5
  # One that breaks before its first frame is undecodable.
  def breaking_at_once(self, stream):
    raise av.error.InvalidDataError(1094995529, "Invalid data found")
    yield   # a generator, as decode is
  monkeypatch.setattr(BreakingAfterSix, "decode", breaking_at_once)
  with pytest.raises(VideoDecodeError, match="Invalid data found"):
    video.decode(path)


def test_a_cover_picture_stream_is_not_the_video():
  from types import SimpleNamespace
  cover = SimpleNamespace(disposition=av.stream.Disposition.attached_pic)
  clip = SimpleNamespace(disposition=av.stream.Disposition.default)
  container = SimpleNamespace(streams=SimpleNamespace(video=[cover, clip]))
  assert video._video_stream(container) is clip
  container.streams.video = [cover]
  assert video._video_stream(container) is None


def test_long_videos_are_resized_a_chunk_at_a_time(monkeypatch):
  from grurcn_jax.host_tf import tf
  frames = np.random.default_rng(0).integers(0, 256, (70, 48, 64, 3), dtype=np.uint8)
  whole = video.resize_and_crop(frames[:video.RESIZE_CHUNK], 32)
  resize, sizes = tf.image.resize, []
  monkeypatch.setattr(tf.image, "resize", lambda images, *a, **k: (
      sizes.append(len(images)), resize(images, *a, **k))[1])
  chunked = video.resize_and_crop(frames, 32)
  assert chunked.shape == (70, 32, 32, 3) and max(sizes) <= video.RESIZE_CHUNK
  np.testing.assert_array_equal(chunked[:video.RESIZE_CHUNK], whole)


def test_fps_above_the_videos_rate_keeps_every_frame_and_the_estimate_says_so(tmp_path):
  path = str(tmp_path / "v.mp4")
  encode_video(path, num_frames=12, seed=0)   # 25 fps
  _, indices = video.decode(path, fps=50)
  np.testing.assert_array_equal(indices, range(12))   # none repeated
  assert video.estimate_frames(path, fps=50) == 12     # not 24


def test_a_video_whose_frame_size_changes_is_a_decode_error(tmp_path):
  """Two MPEG-TS streams joined end to end (as web videos can be) decode to frames
  of two sizes: a VideoDecodeError (extraction lists and skips the video), not a
  ValueError from stacking them that stopped the whole extraction."""
  def transport_stream(width, height):
    path = tmp_path / f"{width}x{height}.ts"
    with av.open(str(path), "w", format="mpegts") as container:
      stream = container.add_stream("mpeg2video", rate=25)
      stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
      for i in range(5):
        frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), 40 * i, np.uint8),
                                           format="rgb24")
        for packet in stream.encode(frame):
          container.mux(packet)
      for packet in stream.encode():
        container.mux(packet)
    return path.read_bytes()
  joined = tmp_path / "joined.ts"
  joined.write_bytes(transport_stream(64, 48) + transport_stream(48, 64))
  # (Which frame the decoder gives first of the second stream is its business.)
  with pytest.raises(VideoDecodeError, match=r"the frame size changes at frame \d, "
                                             r"from 64x48 to 48x64"):
    video.decode(str(joined))
