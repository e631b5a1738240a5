"""What a compiled program does, read from its HLO text.

`jax.jit(f).lower(...).compile().as_text()` is the per-device program after SPMD
partitioning: its shapes are what each device holds, its collectives are what the
devices exchange. The benchmark's `--what=scaling` and the data-parallel tests read
it through these functions.
"""

import dataclasses
import re
from typing import Dict, List, Tuple

import numpy as np

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all",
               "collective-permute")

_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<type>\([^=]*?\)|\S+)\s+"
    r"(?P<op>[\w\-]+)\((?P<operands>[^)]*)\)")
_COMMENT = re.compile(r"/\*.*?\*/")
_SHAPE = re.compile(r"\b(pred|[suf]\d+|bf16|f8\w*)\[([\d,]*)\]")
_BYTES = {"pred": 1, "bf16": 2}


@dataclasses.dataclass(frozen=True)
class Instruction:
  name: str
  op: str
  shapes: Tuple[Tuple[str, Tuple[int, ...]], ...]   # (dtype, dims) of the result
  operands: Tuple[str, ...]

  @property
  def bytes(self) -> int:
    return sum(_dtype_bytes(dtype) * int(np.prod(dims)) for dtype, dims in self.shapes)


def _dtype_bytes(dtype: str) -> int:
  if dtype in _BYTES:
    return _BYTES[dtype]
  bits = re.sub(r"\D", "", dtype.split("e")[0])
  return max(1, int(bits or 8) // 8)


def _shapes(text: str):
  return tuple((dtype, tuple(int(d) for d in dims.split(",") if d))
               for dtype, dims in _SHAPE.findall(text))


def instructions(hlo_text: str) -> List[Instruction]:
  """Every instruction of every computation in the module."""
  found = []
  for line in hlo_text.splitlines():
    match = _INSTRUCTION.match(_COMMENT.sub("", line))
    if match:
      operands = tuple(o.strip().split()[-1].lstrip("%")
                       for o in match["operands"].split(",") if o.strip())
      found.append(Instruction(match["name"], match["op"], _shapes(match["type"]),
                               operands))
  return found


def collective_bytes(hlo_text: str) -> Dict[str, int]:
  """Bytes each kind of collective produces per device, each instruction once
  (a collective inside a loop body runs once per iteration)."""
  totals = {kind: 0 for kind in COLLECTIVES}
  for instruction in instructions(hlo_text):
    kind = _collective_kind(instruction.op)
    if kind:
      totals[kind] += instruction.bytes
  return totals


def all_gathers(hlo_text: str) -> List[Instruction]:
  return [i for i in instructions(hlo_text) if _collective_kind(i.op) == "all-gather"]


def _collective_kind(op: str):
  # An asynchronous collective (GPU, TPU) is a -start/-done pair: the -start's
  # result is a tuple that also holds its operand (and, for a permute, context
  # words); the -done's is the data the collective produced.
  for kind in COLLECTIVES:
    if op == kind or op == kind + "-done":
      return kind
  return None


def convolution_shapes(hlo_text: str) -> List[Tuple[Tuple[int, ...], ...]]:
  """Per convolution, the shapes of its operands and of its result."""
  all_instructions = instructions(hlo_text)
  shape_of = {i.name: i.shapes[0][1] for i in all_instructions if len(i.shapes) == 1}
  found = []
  for instruction in all_instructions:
    if instruction.op == "convolution":
      operand_shapes = tuple(shape_of[o] for o in instruction.operands if o in shape_of)
      found.append(operand_shapes + (instruction.shapes[0][1],))
  return found
