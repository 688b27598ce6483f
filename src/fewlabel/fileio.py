"""Atomic, durable file writes, and reads of a user's files that fail in one line.

A write goes to a temporary file in the same folder, is flushed to disk (fsync), renamed onto
its name, and the folder is flushed too: an interrupted write or a power cut never leaves a
half-written file where a reader expects a whole one, and a full disk is one line naming the
file (the previous file stays). A temporary file a killed process left behind is removed by
:func:`remove_stale_temporaries` on the next run. Reads of text, JSON, YAML and safetensors turn
decoding errors into a :class:`FewlabelError` naming the file and what is accepted.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from .errors import FewlabelError

_UMASK = os.umask(0)
os.umask(_UMASK)


_TEMPORARY_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")  # atomic_write's (mkstemp's) names: ".NAME.XXXXXXXX.tmp"
# what torch's and Lightning's writers raise (RuntimeError) when the disk fills under them
_SHORT_WRITE_MARKS = ("inline_container", "iostream", "file write failed", "unexpected pos")


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)``, flush it to disk, then rename the temporary file onto ``path``.
    A failed write (disk full, no permission) is one line naming ``path``; ``path`` keeps what
    it held."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        write(Path(tmp))
        _fsync(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
        _fsync(path.parent)
    except OSError as exc:
        raise write_error(path, exc.strerror or str(exc)) from None
    except RuntimeError as exc:
        if not any(mark in str(exc) for mark in _SHORT_WRITE_MARKS):
            raise
        raise write_error(path, "the writer stopped short") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_error(path: Path, reason: str) -> FewlabelError:
    """The one-line error of a failed write, with the free space where ``path`` lives."""
    try:
        free = f"; {shutil.disk_usage(path.parent if path.parent.exists() else '.').free / 2**20:.0f} MB free there"
    except OSError:
        free = ""
    return FewlabelError(f"Cannot write '{path}' ({reason}{free}); anything written there before is kept.")


def _fsync(path: str | Path) -> None:
    """Flush a file, or a folder's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_temporary_name(name: str) -> bool:
    """Whether ``name`` is one of atomic_write's temporary files (and no one else's)."""
    return _TEMPORARY_NAME.fullmatch(name) is not None


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Remove the temporary files interrupted writes left under ``folder`` (its own kind of
    file, nothing else); returns them."""
    stale = [p for p in Path(folder).rglob(".*.tmp") if p.is_file() and is_temporary_name(p.name)]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_yaml(path: str | Path, data: Any) -> Path:
    return write_text(path, yaml.safe_dump(data, sort_keys=False))


def write_arrays(path: str | Path, arrays: Any) -> Path:
    """One array as .npy, or a dict of named arrays as compressed .npz (NumPy's formats, read
    back with ``allow_pickle=False``)."""
    import numpy as np

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # a handle: NumPy would add a suffix to the temporary name
            if isinstance(arrays, dict):
                np.savez_compressed(handle, **arrays)
            else:
                np.save(handle, arrays)

    return atomic_write(path, write)


def write_tensors(path: str | Path, tensors: dict) -> Path:
    """Tensors as safetensors (no code inside; loading never unpickles), written through a
    handle so that a full disk is reported (safetensors' own file writer can miss it)."""
    from safetensors.torch import save

    return atomic_write(path, lambda tmp: tmp.write_bytes(save(tensors)))


def read_text(path: str | Path) -> str:
    """A user's text file as UTF-8 (a byte-order mark, as Excel's "CSV UTF-8" writes, is
    dropped); another encoding or an unreadable file is one line naming it."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FewlabelError(
            f"'{path}' is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at position {exc.start}); "
            "save it as UTF-8 (Excel: 'CSV UTF-8')."
        ) from None
    except OSError as exc:
        raise FewlabelError(f"Cannot read '{path}': {exc.strerror or exc}.") from None


def read_json(path: str | Path) -> Any:
    """A JSON file; bad JSON is one line naming the file and where it breaks."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise FewlabelError(f"'{path}' is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}).") from None


def read_yaml(path: str | Path) -> Any:
    """A YAML file (safe loader: plain data only); bad YAML is one line naming the file."""
    try:
        return yaml.safe_load(read_text(path))
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f"line {where.line + 1}: " if where is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise FewlabelError(f"'{path}' is not valid YAML ({line}{problem}).") from None


def read_tensors(path: str | Path) -> dict:
    """The tensors of a safetensors file; a truncated or foreign file is one line naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FewlabelError(
            f"'{path}' is not a readable safetensors file ({reason}): truncated, or not written by "
            "safetensors; copy it again or retrain."
        ) from None


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
