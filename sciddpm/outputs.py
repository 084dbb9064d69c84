"""Output files a user can trust: the one atomic writer every writer in the project uses, and the checks that run
before any sampling starts.

* ``atomic_path(path)``: a context manager yielding a temporary name in the same folder (``.NAME.tmp-PID.EXT``, the
  extension kept so a writer that reads it still sees the format); on success the file gets the ordinary mode
  (0666 less the umask, like ``open``) and is renamed over ``path`` (``os.replace``: atomic on one file system);
  on any failure, ``KeyboardInterrupt`` included, the temporary is removed and ``path`` is untouched.
* ``atomic_folder(path)``: the same for a folder (an export): written whole beside it, then swapped in.
* ``check_output(path, suffixes)``: before any work, refuse an output path whose extension names no format the
  writer knows, that is an existing folder, or whose folder cannot be created or written (one-line ValueError).
* ``require_suffix(path, suffixes)``: the writers' own check of the same (a writer never writes one format under
  another's extension).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _default_mode(folder: bool = False) -> int:
    """The mode ``open``/``mkdir`` would give a new file/folder: 0666/0777 less the process umask."""
    return (0o777 if folder else 0o666) & ~_umask()


def temporary_name(path: Path) -> Path:
    """``.NAME.tmp-PID.EXT`` beside ``path`` (same folder, so the final rename is atomic; extension kept)."""
    path = Path(path)
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` when the block succeeds, remove it otherwise.

    The writer inside the block writes the whole file to the yielded name (with any library: ``np.save``,
    ``savefig``, RDKit, safetensors). A file the writer did not create is an error (nothing is renamed)."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        if not tmp.is_file():
            raise ValueError(f"{path}: the writer wrote nothing")
        os.chmod(tmp, _default_mode())  # some writers (safetensors, mkstemp) create 0600 files
        os.replace(tmp, path)
    finally:
        if tmp.exists() or tmp.is_symlink():
            tmp.unlink()


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; when the block succeeds it replaces ``path`` (the old folder
    is moved aside, the new one renamed in, the old one removed); on failure the temporary folder is removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        for child in tmp.iterdir():
            os.chmod(child, _default_mode(child.is_dir()))
        if path.exists():
            path.rename(old)
        tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def require_suffix(path: str | Path, suffixes: tuple[str, ...], what: str = "output") -> str:
    """The lower-case extension of ``path`` if it is one of ``suffixes``; one-line ValueError naming them if not."""
    suffix = Path(path).suffix.lower()
    if suffix not in suffixes:
        named = f"extension {suffix!r}" if suffix else "no extension"
        raise ValueError(f"{what} {path} has {named}; this writer writes {', '.join(suffixes)}")
    return suffix


def check_output(path: str | Path, suffixes: tuple[str, ...] | None = None, what: str = "output") -> Path:
    """Check an output file path before any work is done (sampling, estimation): the extension is one of
    ``suffixes`` (None: any), the path is not an existing folder, its folder exists or can be created, is a folder
    and is writable (a probe file is created and removed). Creates the folder; returns ``path``. ValueError if not."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is an existing folder; give a file name")
    if suffixes is not None:
        require_suffix(path, suffixes, what)
    parent = path.parent
    for p in (parent, *parent.parents):
        if p.exists():
            if not p.is_dir():
                raise ValueError(f"{what} {path}: {p} is a file, not a folder")
            break
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.stem}.probe-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(f"{what} {path}: folder {parent} is not writable ({exc.strerror or exc})") from None
    return path


__all__ = ["atomic_path", "atomic_folder", "check_output", "require_suffix", "temporary_name"]
