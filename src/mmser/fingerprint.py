"""Proof that reused work matches the current inputs, and files that survive interruption.

DVC decides when a stage runs. Inside a run, work done before (a finished fold's
checkpoint, an encoder state in the feature cache) is reused only when its fingerprint
equals the current one, and a fingerprint is made of digests, never of hand-kept versions:
- `code_digest(modules)`: the source of every project module the given ones import,
  transitively, plus the versions of the libraries that compute (torch, transformers, ...);
- `value_digest(value)`: any nest of dicts, sequences, tensors, arrays and scalars (the
  items a model trains on, a parameter section, a model's weights).
`module_closure` is also what `tests/test_layout.py` uses to check that dvc.yaml lists
every module a stage imports.

Files a later step trusts are written with `atomic_write` (a temporary file, then a
rename: a killed process leaves the old file or none, never half of one), and a file that
still turns out unreadable is moved aside by `set_aside`, with a message that names it.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import logging
import os
from collections.abc import Callable, Iterable
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

PACKAGE_DIR = Path(__file__).resolve().parent
LIBRARIES = ("torch", "transformers", "lightning", "numpy", "scikit-learn", "safetensors",
             "torchaudio", "librosa")
log = logging.getLogger("mmser")


# ---------------------------------------------------------------------------------- code


def module_file(name: str) -> Path | None:
    """The file of a dotted project module name (`mmser.x.y`), None when there is none."""
    parts = name.split(".")
    if parts[0] != "mmser":
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def project_imports(code: str) -> set[str]:
    """Dotted project modules that `code` imports, at any depth (lazy imports count);
    `from mmser.x import y` counts `mmser.x.y` when y is a module itself."""
    out = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "mmser"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] == "mmser":
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names
                    if module_file(f"{node.module}.{a.name}") is not None}
    return {n for n in out if module_file(n) is not None}


def module_closure(modules: Iterable[str]) -> set[Path]:
    """Every project file that importing `modules` runs: each one, the modules it imports,
    transitively, and their parent packages' `__init__.py`."""
    todo, seen = list(modules), set()
    while todo:
        parts = todo.pop().split(".")
        for i in range(1, len(parts) + 1):
            path = module_file(".".join(parts[:i]))
            if path is not None and path not in seen:
                seen.add(path)
                todo.extend(project_imports(path.read_text()))
    return seen


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries whose upgrade may change a result."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


@lru_cache(maxsize=None)
def _code_digest(modules: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    for path in sorted(module_closure(modules)):
        digest.update(str(path.relative_to(PACKAGE_DIR)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    digest.update(repr(sorted(library_versions().items())).encode())
    return digest.hexdigest()


def code_digest(*modules: str) -> str:
    """Digest of the code that `modules` run: their project files' source, transitively,
    and the computing libraries' versions. Cached per process: the source a process runs
    does not change under it (a test that edits a file calls `code_digest.cache_clear`)."""
    return _code_digest(tuple(sorted(set(modules))))


code_digest.cache_clear = _code_digest.cache_clear  # type: ignore[attr-defined]


# -------------------------------------------------------------------------------- values


def _update(digest, value) -> None:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().contiguous()
        digest.update(f"tensor{value.dtype}{tuple(value.shape)}".encode())
        if value.numel():  # a view of the bytes, not a copy (twice as fast)
            digest.update(memoryview(value.view(-1).view(torch.uint8).numpy()))
    elif isinstance(value, np.ndarray):
        digest.update(f"array{value.dtype}{value.shape}".encode())
        digest.update(memoryview(np.ascontiguousarray(value)).cast("B"))
    elif isinstance(value, dict):
        digest.update(b"{")
        for key in sorted(value, key=str):
            digest.update(repr(key).encode() + b":")
            _update(digest, value[key])
        digest.update(b"}")
    elif isinstance(value, (list, tuple)):
        digest.update(f"{type(value).__name__}[".encode())
        for element in value:
            _update(digest, element)
        digest.update(b"]")
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        _update(digest, {"dataclass": type(value).__name__, **dataclasses.asdict(value)})
    elif isinstance(value, torch.nn.Module):
        _update(digest, value.state_dict())
    elif value is None or isinstance(value, (str, int, float, bool, np.generic, Path)):
        digest.update(f"{type(value).__name__}={value!r};".encode())
    else:
        raise TypeError(f"cannot fingerprint a {type(value).__name__}: give its parameters "
                        "as plain values")


def value_digest(value) -> str:
    """Digest of the content of `value`: dicts (in key order), lists, tuples, dataclasses,
    tensors and arrays (dtype, shape and bytes), modules (their state dict) and scalars."""
    digest = hashlib.sha256()
    _update(digest, value)
    return digest.hexdigest()


# --------------------------------------------------------------------------------- files


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """`write(tmp)` into a temporary file beside `path`, then rename it to `path`: readers
    see the old file or the whole new one, never a half-written file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path: str | Path, text: str) -> Path:
    """`Path.write_text`, atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def set_aside(path: str | Path, problem: str) -> Path:
    """Move an unreadable file out of the way (to `<name>.corrupt`), saying which and why;
    the caller then redoes the work that made it."""
    path = Path(path)
    aside = path.with_name(path.name + ".corrupt")
    os.replace(path, aside)
    log.warning("%s: %s; moved aside to %s, and its work is done again", path, problem,
                aside.name)
    return aside
