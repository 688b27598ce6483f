"""Output folders that cannot destroy what fewlabel did not write.

Every command that writes a folder (a run, a recipe, rendered or built data, an audit) opens it
with :func:`output_folder`. Before anything is written it refuses an output that is one of the
command's inputs, lies inside one or holds one. A folder fewlabel creates gets a marker file
(:data:`MARKER`, written first) naming its kind; ``overwrite`` replaces only a folder that carries
the marker of the same kind (or, for folders written before markers, the kind's own record file)
and holds nothing but what that kind writes, and names anything else it finds.

An overwrite never deletes the previous output before the new one is complete. By default
(``swap="beside"``) the new output is built in ``.NAME.fewlabel-new/NAME`` next to the old one
(same folder name, so reports and records name it the same) and swapped in when complete; a
failure leaves the old output in place and removes the new one; a ``kill -9`` leaves both, and
the next command on the same output clears the half-built one (or, with ``--resume``, continues
it). Outputs that record their own path inside (a recipe names its stages' weights and built data
by path) use ``swap="aside"``: the old output waits in ``.NAME.fewlabel-old`` while the new one
is written in place, and comes back if the new one fails, or at the next command after a kill.
Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ._version import __version__
from .errors import FewlabelError
from .fileio import is_temporary_name, read_json, remove_stale_temporaries, write_json

log = logging.getLogger("fewlabel")
MARKER = ".fewlabel.json"  # {"kind", "version", "complete", "entries"}: this folder is fewlabel's output
NEW_SUFFIX, OLD_SUFFIX = ".fewlabel-new", ".fewlabel-old"


@dataclass(frozen=True)
class OutputKind:
    """What a kind of output folder holds: the top-level names (glob patterns) it writes, and its
    own record files that mark a folder written before :data:`MARKER` existed."""

    name: str
    entries: tuple[str, ...]
    records: tuple[str, ...]
    resumable: bool = False  # its command takes --resume


OUTPUT_KINDS: dict[str, OutputKind] = {}


def register_output_kind(
    name: str, entries: Iterable[str], records: Iterable[str], resumable: bool = False
) -> OutputKind:
    """Register a kind of output folder (called where its writer is defined)."""
    kind = OutputKind(name, tuple(entries), tuple(records), resumable)
    OUTPUT_KINDS[name] = kind
    return kind


def _kind(name: str) -> OutputKind:
    if name not in OUTPUT_KINDS:
        raise KeyError(f"output kind '{name}' is not registered; known: {', '.join(sorted(OUTPUT_KINDS))}")
    return OUTPUT_KINDS[name]


def staging_path(out: Path) -> Path:
    """Where an overwrite builds the new output: ``.NAME.fewlabel-new/NAME`` beside ``out``."""
    return out.parent / f".{out.name}{NEW_SUFFIX}" / out.name


def aside_path(out: Path) -> Path:
    """Where the previous output waits while a new one replaces it."""
    return out.parent / f".{out.name}{OLD_SUFFIX}"


def read_marker(folder: Path) -> dict | None:
    """The folder's marker, or None when it has none (or an unreadable one)."""
    if not (folder / MARKER).is_file():
        return None
    try:
        return read_json(folder / MARKER)
    except FewlabelError:
        return None


def write_marker(folder: Path, kind: str, complete: bool = False) -> None:
    """Mark ``folder`` as fewlabel's output of ``kind``; once ``complete``, with its top-level entries."""
    record = {"kind": kind, "version": __version__, "complete": complete}
    if complete:
        record["entries"] = sorted(p.name for p in folder.iterdir() if p.name != MARKER)
    write_json(folder / MARKER, record)


def is_output_of(folder: Path, kind: str) -> bool:
    """Whether ``folder`` is fewlabel's output of ``kind``: by its marker, or (written before
    markers) by the kind's own record file."""
    marker = read_marker(folder)
    if marker is not None:
        return marker.get("kind") == kind
    return any((folder / record).is_file() for record in _kind(kind).records)


def foreign_entries(folder: Path, kind: str) -> list[str]:
    """Top-level entries of ``folder`` that fewlabel's ``kind`` does not write (sorted)."""
    marker = read_marker(folder) or {}
    known = (*_kind(kind).entries, *marker.get("entries", ()), MARKER)
    return sorted(
        p.name
        for p in folder.iterdir()
        if not (is_temporary_name(p.name) or any(fnmatch.fnmatch(p.name, k) for k in known))
    )


def _holds_files(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


def check_inputs(out: Path, inputs: Iterable[str | Path]) -> None:
    """Refuse an output that is an input, lies inside an input folder, or holds an input."""
    target = out.resolve()
    for given in inputs:
        path = Path(given).resolve()
        if target == path:
            raise FewlabelError(f"--out '{out}' is the input '{given}'; choose another --out folder.")
        if path.is_dir() and target.is_relative_to(path):
            raise FewlabelError(f"--out '{out}' lies inside the input folder '{given}'; choose a folder outside it.")
        if path.is_relative_to(target):
            raise FewlabelError(f"--out '{out}' holds the input '{given}'; choose a folder that does not.")


def input_paths(values: Iterable) -> list[Path]:
    """The existing files and folders named by ``values`` (strings, nested lists and dicts; a
    ``FOLDER:split`` spec names FOLDER): what a command reads and must never write over."""
    found: list[Path] = []
    for value in values:
        if isinstance(value, dict):
            found += input_paths(value.values())
        elif isinstance(value, list | tuple):
            found += input_paths(value)
        elif isinstance(value, str | Path) and str(value):
            for candidate in {str(value), str(value).rpartition(":")[0]} - {""}:
                with contextlib.suppress(OSError, ValueError):
                    if Path(candidate).exists():
                        found.append(Path(candidate))
    return found


def not_own(folder: Path, kind: str) -> str | None:
    """Why ``folder`` is not fewlabel's output of ``kind`` alone (None when it is): what it holds."""
    if not is_output_of(folder, kind):
        other = (read_marker(folder) or {}).get("kind")
        if other:
            return f"holds fewlabel's {other} output, not a {kind}"
        shown = sorted(p.name for p in folder.iterdir())
        more = f" and {len(shown) - 5} more" if len(shown) > 5 else ""
        return f"was not written by fewlabel ({', '.join(shown[:5])}{more})"
    foreign = foreign_entries(folder, kind)
    return f"holds files fewlabel did not write ({', '.join(foreign[:5])})" if foreign else None


def _check_replaceable(out: Path, kind: str) -> None:
    """Refuse to overwrite a folder that is not fewlabel's output of ``kind`` or holds more."""
    reason = not_own(out, kind)
    if reason:
        raise FewlabelError(f"--overwrite: '{out}' {reason}; move those out or choose another --out folder.")


def recover(out: Path, kind: str, resume: bool = False) -> None:
    """Finish or undo what an interrupted swap left beside ``out``: a complete new output is moved
    into place; the old one comes back when ``out`` is missing or half-written; a half-built new
    one is removed (kept for ``resume``). Only folders carrying fewlabel's output of ``kind`` and
    nothing else are ever removed; anything else in their place is refused, named."""
    staged, aside = staging_path(out), aside_path(out)
    staged_done = (read_marker(staged) or {}).get("complete", False)
    if staged.is_dir() and staged_done and not out.exists():
        os.replace(staged, out)
        log.info("finished the interrupted overwrite of '%s'", out)
    if aside.is_dir():
        _check_own(aside, kind)
        if _holds_files(out) and (read_marker(out) or {}).get("complete"):
            _remove_own(aside, kind)
        else:
            if out.exists():
                _remove_own(out, kind)
            os.replace(aside, out)
            log.info("brought back the previous '%s': the overwrite that replaced it did not finish", out)
    if staged.parent.is_dir() and not (resume and staged.is_dir()):
        others = [p.name for p in staged.parent.iterdir() if p.name != out.name]
        if others:
            raise FewlabelError(f"'{staged.parent}' holds files fewlabel did not write ({', '.join(others[:5])}).")
        if staged.exists():
            _remove_own(staged, kind)
        staged.parent.rmdir()


def _remove_own(folder: Path, kind: str) -> None:
    """Remove a folder of fewlabel's ``kind`` output (or an empty one, created just before a kill);
    refuse (naming it) one that is not, or holds more."""
    if not _holds_files(folder):
        folder.rmdir()
        return
    _check_own(folder, kind)
    shutil.rmtree(folder)


def _check_own(folder: Path, kind: str) -> None:
    reason = not_own(folder, kind)
    if reason:
        raise FewlabelError(
            f"'{folder}' is in the way of an interrupted overwrite but is not fewlabel's {kind} output alone "
            f"(it {reason}); move it away and rerun."
        )


@contextlib.contextmanager
def output_folder(
    out: str | Path,
    kind: str,
    *,
    overwrite: bool = False,
    resume: bool = False,
    inputs: Iterable[str | Path] = (),
    swap: str = "beside",
    writes: bool = True,
    keep_on_error: Callable[[Path], bool] = lambda folder: False,
) -> Iterator[Path]:
    """Yield the folder to write ``kind`` output into; see the module docstring.

    ``resume``: continue an existing output of ``kind`` in place (or the half-built one of an
    interrupted overwrite). ``writes`` False (DDP processes other than 0): only compute the
    folder, touch nothing. ``keep_on_error(folder)``: whether a new output that failed is worth
    keeping (a run with a checkpoint, for ``--resume``); otherwise it is removed.
    """
    out = Path(out)
    if overwrite and resume:
        raise FewlabelError("Use either --overwrite or --resume, not both.")
    check_inputs(out, inputs)
    if not writes:
        staged = staging_path(out)
        beside = swap == "beside" and ((overwrite and _holds_files(out)) or (resume and staged.is_dir()))
        yield staged if beside else out
        return
    recover(out, kind, resume)
    existed = out.is_dir()
    target, fresh = _claim(out, kind, overwrite, resume, swap)
    try:
        if fresh:
            write_marker(target, kind)
        for stale in remove_stale_temporaries(target):
            log.info("removed %s, left by an interrupted write", stale)
        yield target
    except BaseException:
        _abandon(out, target, keep_on_error, existed, fresh)
        raise
    write_marker(target, kind, complete=True)
    _swap_in(out, target)


def audit_folder(out: str | Path, kind: str) -> contextlib.AbstractContextManager[Path]:
    """:func:`output_folder` for an audit, which a rerun replaces: a previous audit of the same
    kind is replaced (built beside, swapped in), any other non-empty folder refused."""
    out = Path(out)
    if _holds_files(out) and not is_output_of(out, kind):
        raise FewlabelError(f"'{out}' holds files that are not a {kind}; choose an empty or new --out folder.")
    return output_folder(out, kind, overwrite=_holds_files(out))


def _claim(out: Path, kind: str, overwrite: bool, resume: bool, swap: str) -> tuple[Path, bool]:
    """Check ``out`` and create the folder the command writes into; returns it and whether this
    call created it (a resumed folder is not: a failure never removes it)."""
    staged = staging_path(out)
    if resume:
        if staged.is_dir():
            return staged, False
        if not _holds_files(out):
            raise FewlabelError(f"--resume: '{out}' does not exist or is empty; start the run without --resume.")
        if not is_output_of(out, kind):
            raise FewlabelError(f"--resume: '{out}' is not a fewlabel {kind}; check --out.")
        return out, False
    if _holds_files(out):
        if not overwrite:
            also = " or --resume to continue it" if _kind(kind).resumable else ""
            raise FewlabelError(f"'{out}' exists; pass --overwrite to replace it{also}, or choose another --out.")
        _check_replaceable(out, kind)
        if swap == "aside":
            os.replace(out, aside_path(out))
        else:
            out = staged
    out.mkdir(parents=True, exist_ok=True)
    return out, True


def _abandon(out: Path, target: Path, keep_on_error: Callable[[Path], bool], existed: bool, fresh: bool) -> None:
    """After a failure: a folder this call created is removed unless worth resuming (a folder that
    existed, empty, is emptied, not removed), and always when the old output waits aside, which
    then comes back. A resumed folder is never removed."""
    aside = aside_path(out)
    if fresh and (aside.is_dir() or not keep_on_error(target)):
        shutil.rmtree(target.parent if target != out else out, ignore_errors=True)
        if target == out and existed and not aside.is_dir():
            out.mkdir(exist_ok=True)
    elif target != out:
        log.warning("'%s' is untouched; the unfinished new one waits in '%s': --resume continues it", out, target)
    if aside.is_dir():
        os.replace(aside, out)


def _swap_in(out: Path, target: Path) -> None:
    """Put a complete new output in place of the old one and remove the old one."""
    aside = aside_path(out)
    if target != out:
        if out.exists():
            os.replace(out, aside)
        os.replace(target, out)
        shutil.rmtree(target.parent, ignore_errors=True)
    if aside.exists():
        shutil.rmtree(aside)
