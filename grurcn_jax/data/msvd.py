"""MSVD (YouTube2Text): its clips, their English references and the standard split.

The corpus ships three things this module reads:
  VIDEOS/<clip>.avi              the 1,970 clips (`YouTubeClips/`)
  youtube_mapping.txt            `<clip> vidN`: the standard order vid1..vid1970
  AllVideoDescriptions.txt       `<clip> <caption>`, about 40 per clip; lines
                                 starting with '#' are its header

The split everyone reports on is by that order: vid1..vid1200 train,
vid1201..vid1300 validation, vid1301..vid1970 test (`SPLIT_SIZES`). Video ids are
the clip names, so generated captions can be looked up in the corpus; labels are
-1 (no classes).
"""

import os
from typing import Dict, List, Sequence, Set, Tuple

from absl import logging

from grurcn_jax.data import ucf101
from grurcn_jax.errors import SplitFileError

SPLIT_SIZES = (1200, 100, 670)
SPLIT_NAMES = ("train", "val", "test")


def _lines(path: str) -> List[Tuple[int, str]]:
  """Numbered lines of text, blank and '#' lines left out. A byte-order mark is
  read as none; bytes that are not UTF-8 become U+FFFD (the tokeniser drops it,
  as PTB does) with one warning naming the lines."""
  if not os.path.isfile(path):
    raise SplitFileError(f"missing file: {path}")
  with open(path, encoding="utf-8-sig", errors="replace") as f:
    lines = [(n, line.strip()) for n, line in enumerate(f, 1)
             if line.strip() and not line.lstrip().startswith("#")]
  replaced = [n for n, line in lines if "\ufffd" in line]
  if replaced:
    logging.warning("%s: %d line(s) hold bytes that are not UTF-8 (replaced, then "
                    "dropped from their words), the first line %d", path,
                    len(replaced), replaced[0])
  return lines


def read_mapping(path: str) -> Dict[str, int]:
  """clip name -> N of its `vidN`."""
  order = {}
  numbers = {}
  for n, line in _lines(path):
    parts = line.split()
    if len(parts) != 2 or not parts[1].startswith("vid") or not parts[1][3:].isdigit():
      raise SplitFileError(f"{path}:{n}: malformed line {line!r} (expected "
                           f"'<clip> vidN')")
    clip, number = parts[0], int(parts[1][3:])
    if clip in order or number in numbers:
      raise SplitFileError(f"{path}:{n}: {clip if clip in order else parts[1]} "
                           f"appears twice")
    order[clip], numbers[number] = number, clip
  if not order:
    raise SplitFileError(f"{path}: no clips")
  return order


def read_descriptions(path: str) -> Dict[str, List[str]]:
  """clip name -> its captions, in the file's order."""
  references: Dict[str, List[str]] = {}
  for n, line in _lines(path):
    parts = line.split(None, 1)
    if len(parts) != 2:
      raise SplitFileError(f"{path}:{n}: malformed line {line!r} (expected "
                           f"'<clip> <caption>')")
    references.setdefault(parts[0], []).append(parts[1])
  return references


def split_of(order: Dict[str, int], sizes: Sequence[int] = SPLIT_SIZES) -> Dict[str, str]:
  """clip -> train | val | test: the first sizes[0] clips of the vidN order are
  train, the next sizes[1] val, the next sizes[2] test."""
  if len(sizes) != 3 or any(s < 0 for s in sizes) or not sizes[0] or not sizes[2]:
    raise SplitFileError(f"split sizes {tuple(sizes)}: give train,val,test counts "
                         f"(train and test at least 1)")
  ranked = sorted(order, key=order.get)
  if len(ranked) != sum(sizes):
    raise SplitFileError(f"the mapping lists {len(ranked)} clips; the split sizes "
                         f"{','.join(map(str, sizes))} add up to {sum(sizes)}")
  bounds = [sum(sizes[:i + 1]) for i in range(3)]
  return {clip: SPLIT_NAMES[next(i for i, b in enumerate(bounds) if rank < b)]
          for rank, clip in enumerate(ranked)}


def _video_path(videos_dir: str, clip: str, files: Set[str],
                folded: Dict[str, List[str]]) -> str:
  """The clip's file: its exact name first (YouTube ids tell case apart), else the
  one file whose name differs in case only (an archive unpacked on a case-folding
  file system)."""
  for extension in ucf101.VIDEO_EXTENSIONS:
    if clip + extension in files:
      return os.path.join(videos_dir, clip + extension)
  for extension in ucf101.VIDEO_EXTENSIONS:
    matches = folded.get((clip + extension).lower(), [])
    if len(matches) == 1:
      return os.path.join(videos_dir, matches[0])
  return ""


def msvd_entries(videos_dir: str, captions_file: str, mapping_file: str,
                 sizes: Sequence[int] = SPLIT_SIZES
                 ) -> Tuple[List[ucf101.VideoEntry], Dict[str, List[str]]]:
  """(entries in vidN order, clip -> references of the mapping's clips). Every clip
  of the mapping needs a video file and at least one reference."""
  if not os.path.isdir(videos_dir):
    raise SplitFileError(f"video directory not found: {videos_dir}")
  order = read_mapping(mapping_file)
  split = split_of(order, sizes)
  descriptions = read_descriptions(captions_file)
  files = set(os.listdir(videos_dir))
  folded = {}
  for name in sorted(files):
    folded.setdefault(name.lower(), []).append(name)
  clips = sorted(order, key=order.get)
  paths = {clip: _video_path(videos_dir, clip, files, folded) for clip in clips}
  for problem, missing in (("no video file in " + videos_dir,
                            [c for c in clips if not paths[c]]),
                           ("no caption in " + captions_file,
                            [c for c in clips if not descriptions.get(c)])):
    if missing:
      raise SplitFileError(f"{len(missing)} clip(s) of the mapping have {problem}: "
                           f"{', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}")
  # Captioning has no classes: label -1.
  entries = [ucf101.VideoEntry(clip, paths[clip], -1, split[clip]) for clip in clips]
  return entries, {clip: descriptions[clip] for clip in clips}
