"""The package's shape: one-way imports, and the maps of it that people read
(docs/architecture.md, the README's package map) list exactly what is there."""

import ast
import os
import pathlib
import re
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = REPO / "grurcn_jax"


def package_modules():
  """Module name -> file, for every module of the package (not __init__)."""
  return {".".join(p.relative_to(REPO).with_suffix("").parts): p
          for p in sorted(PACKAGE.rglob("*.py")) if p.name != "__init__.py"}


def direct_imports(path: pathlib.Path, modules) -> set:
  """What `path` names in its imports, lazily (inside functions) or not: package
  modules, and subpackages (e.g. grurcn_jax.models) as themselves."""
  name = ".".join(path.relative_to(REPO).with_suffix("").parts)
  package = name.rsplit(".", 1)[0]
  known = set(modules) | {m.rsplit(".", 1)[0] for m in modules}
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(parts + ([base] if base else []))
      for alias in node.names:  # `from grurcn_jax.data import features` is a module
        full = f"{base}.{alias.name}"
        found.add(full if full in known else base)
  return {m for m in found if m in known} - {name}


def package_imports(path: pathlib.Path, modules) -> set:
  """The package modules `path` imports, lazily (inside functions) or not."""
  known = set(modules) | {m.rsplit(".", 1)[0] for m in modules}
  name = ".".join(path.relative_to(REPO).with_suffix("").parts)
  # A package's __init__ re-exports its modules: importing it imports them all.
  expanded = set()
  for module in direct_imports(path, modules):
    if module in modules:
      expanded.add(module)
    elif module in known:
      init = PACKAGE.parent / (module.replace(".", "/") + "/__init__.py")
      expanded |= package_imports_of_init(init, modules)
  return expanded - {name}


def package_imports_of_init(init: pathlib.Path, modules) -> set:
  names = set()
  for node in ast.walk(ast.parse(init.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module in modules:
      names.add(node.module)
  return names


def import_graph():
  modules = package_modules()
  return {name: package_imports(path, modules) for name, path in modules.items()}


def find_cycle(graph):
  """A list of modules forming an import cycle, or None."""
  state = {}

  def visit(node, stack):
    state[node] = "open"
    stack.append(node)
    for child in sorted(graph[node]):
      if state.get(child) == "open":
        return stack[stack.index(child):] + [child]
      if child not in state:
        cycle = visit(child, stack)
        if cycle:
          return cycle
    stack.pop()
    state[node] = "done"
    return None

  for node in sorted(graph):
    if node not in state:
      cycle = visit(node, [])
      if cycle:
        return cycle
  return None


def test_the_import_graph_has_no_cycle():
  graph = import_graph()
  assert graph["grurcn_jax.train"] >= {"grurcn_jax.experiment", "grurcn_jax.evaluators"}
  assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_check_finds_a_cycle():
  graph = dict(import_graph())
  graph["grurcn_jax.errors"] = {"grurcn_jax.train"}   # what a back edge looks like
  cycle = find_cycle(graph)
  assert cycle and cycle[0] == cycle[-1] and "grurcn_jax.errors" in cycle


def test_library_modules_do_not_import_the_entry_points():
  entry_points = {"grurcn_jax.main", "grurcn_jax.bench", "grurcn_jax.fuse",
                  "grurcn_jax.data.extract", "grurcn_jax.train", "grurcn_jax.evaluate"}
  graph = import_graph()
  allowed = {"grurcn_jax.main": {"grurcn_jax.train", "grurcn_jax.evaluate"},
             # The demos are rendered videos (extract.Video), then extracted.
             "grurcn_jax.data.demo": {"grurcn_jax.data.extract"},
             "grurcn_jax.data.demo_captions": {"grurcn_jax.data.extract"}}
  for module, imports in graph.items():
    assert not (imports & entry_points) - allowed.get(module, set()), module


def test_evaluation_does_not_import_training():
  code = ("import sys, grurcn_jax.evaluate; "
          "print(sorted(m for m in sys.modules if m.startswith('grurcn_jax')))")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  assert result.returncode == 0, result.stderr[-2000:]
  loaded = eval(result.stdout.strip().splitlines()[-1])  # pylint: disable=eval-used
  assert "grurcn_jax.evaluate" in loaded and "grurcn_jax.train" not in loaded


def test_entry_points_import_tensorflow_only_when_they_use_it():
  # TensorFlow takes seconds to import: a flag error, or training on an image
  # without it, must not wait for it (or need it).
  code = ("import sys, grurcn_jax.main, grurcn_jax.bench, grurcn_jax.data.extract, "
          "grurcn_jax.data.video, grurcn_jax.data.features, grurcn_jax.train; "
          "print('tensorflow' in sys.modules)")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip().splitlines()[-1] == "False"


def _relative(module: str) -> str:
  return module.replace("grurcn_jax.", "").replace(".", "/") + ".py"


def _short(module: str) -> str:
  return module.replace("grurcn_jax.", "").replace(".", "/")


def test_docs_architecture_lists_every_module_and_what_it_imports():
  text = (REPO / "docs" / "architecture.md").read_text()
  rows = re.findall(r"^\| `([\w/]+\.py)` \|.*\| ?([\w/, ]*) \|$", text, re.M)
  modules = package_modules()
  assert {row[0] for row in rows} == {_relative(m) for m in modules}
  for file, listed in rows:
    path = PACKAGE / file
    actual = sorted(_short(m) for m in direct_imports(path, modules))
    assert sorted(filter(None, listed.replace(" ", "").split(","))) == actual, file


def test_readme_package_map_matches_the_tree():
  readme = (REPO / "README.md").read_text()
  block = readme.split("## Map of the package")[1].split("\n## ")[0]
  listed, folder = set(), ""
  for line in block.splitlines():
    match = re.match(r"^ {6}(\w+)/\s*$", line)
    if match:
      folder = match.group(1) + "/"
      continue
    match = re.match(r"^ {6}( {2})?(\w+\.py)\s", line)
    if match:
      listed.add((folder if match.group(1) else "") + match.group(2))
  assert listed == {_relative(m) for m in package_modules()}
