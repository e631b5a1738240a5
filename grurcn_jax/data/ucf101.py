"""UCF-101's split files and class index, and class-per-folder video trees.

UCF-101 ships `classInd.txt` ("1 ApplyEyeMakeup"), `trainlist0N.txt`
("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1") and `testlist0N.txt`
("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi") for splits N = 1, 2, 3; videos live
at `VIDEOS/ClassName/v_ClassName_gXX_cYY.avi`.
"""

import dataclasses
import os
from typing import List, Tuple

from grurcn_jax.errors import SplitFileError

VIDEO_EXTENSIONS = (".avi", ".mp4", ".m4v", ".mkv", ".webm", ".mov", ".mpg", ".mpeg",
                    ".flv", ".3gp", ".wmv")


@dataclasses.dataclass(frozen=True)
class VideoEntry:
  video_id: str     # path relative to the video root, e.g. "Class/v_Class_g01_c01.avi"
  path: str
  label: int
  split: str


def _read_lines(path: str) -> List[str]:
  if not os.path.isfile(path):
    raise SplitFileError(f"missing split file: {path}")
  with open(path, encoding="utf-8-sig") as f:   # a byte-order mark, if saved with one
    return [line.strip() for line in f if line.strip()]


def read_class_index(splits_dir: str) -> List[str]:
  """Class names in label order (label = line number - 1)."""
  path = os.path.join(splits_dir, "classInd.txt")
  names = {}
  for line in _read_lines(path):
    parts = line.split()
    if len(parts) != 2 or not parts[0].isdigit():
      raise SplitFileError(f"{path}: malformed line {line!r} (expected 'N ClassName')")
    names[int(parts[0])] = parts[1]
  if sorted(names) != list(range(1, len(names) + 1)):
    raise SplitFileError(f"{path}: class numbers must run 1..{len(names)}")
  return [names[i] for i in range(1, len(names) + 1)]


def ucf101_entries(videos_dir: str, splits_dir: str, split: int) -> Tuple[List[str], List[VideoEntry]]:
  """(class names, entries of the train and test lists of split 1, 2 or 3)."""
  if split not in (1, 2, 3):
    raise SplitFileError(f"--split={split}: UCF-101 has splits 1, 2 and 3")
  if not os.path.isdir(videos_dir):
    raise SplitFileError(f"video directory not found: {videos_dir}")
  class_names = read_class_index(splits_dir)
  label_of = {name: i for i, name in enumerate(class_names)}
  entries = []
  for split_name, list_name in (("train", f"trainlist0{split}.txt"),
                                ("test", f"testlist0{split}.txt")):
    list_path = os.path.join(splits_dir, list_name)
    for line in _read_lines(list_path):
      video_id = line.split()[0]
      class_name = video_id.split("/")[0]
      if class_name not in label_of:
        raise SplitFileError(f"{list_path}: {video_id!r} names class {class_name!r}, "
                             f"which is not in classInd.txt")
      entries.append(VideoEntry(video_id, os.path.join(videos_dir, video_id),
                                label_of[class_name], split_name))
  return class_names, entries


def _hidden(name: str) -> bool:
  """Not a class or a video: hidden files and folders (.ipynb_checkpoints, macOS's
  ._name beside each copied file) and the folder zip archives made on macOS hold."""
  return name.startswith(".") or name == "__MACOSX"


def folder_entries(videos_dir: str) -> Tuple[List[str], List[VideoEntry]]:
  """A class-per-folder tree. With `train/` and `test/` subfolders, those are the
  splits (each class-per-folder); otherwise every video is in split 'train'."""
  if not os.path.isdir(videos_dir):
    raise SplitFileError(f"video directory not found: {videos_dir}")
  split_dirs = {s: os.path.join(videos_dir, s) for s in ("train", "test")}
  if not all(os.path.isdir(d) for d in split_dirs.values()):
    split_dirs = {"train": videos_dir}
  class_names = sorted({c for d in split_dirs.values() for c in os.listdir(d)
                        if os.path.isdir(os.path.join(d, c)) and not _hidden(c)})
  if not class_names:
    raise SplitFileError(f"no class folders in {videos_dir}")
  entries = []
  for split_name, root in split_dirs.items():
    for label, class_name in enumerate(class_names):
      class_dir = os.path.join(root, class_name)
      if not os.path.isdir(class_dir):
        continue
      for name in sorted(os.listdir(class_dir)):
        if name.lower().endswith(VIDEO_EXTENSIONS) and not _hidden(name):
          entries.append(VideoEntry(f"{class_name}/{name}", os.path.join(class_dir, name),
                                    label, split_name))
  if not entries:
    # A --videos one level too high (its folders hold the class folders) or videos
    # of another extension: nothing to extract is an error, not an empty output.
    shown = ", ".join(class_names[:3]) + (", ..." if len(class_names) > 3 else "")
    raise SplitFileError(
        f"no videos ({', '.join(VIDEO_EXTENSIONS)}) in the class folders of "
        f"{videos_dir} ({shown}): --videos is the folder that holds one folder of "
        f"videos per class")
  return class_names, entries

