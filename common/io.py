"""Reading user text files and cache files without tracebacks, and writing caches so no reader sees half a file.

Three rules every reader in the repo follows:
- Text is UTF-8 (a BOM is accepted). Anything else is one ``InputError`` naming the file, the line and the
  expected encoding; we never guess an encoding silently (latin-1 and cp1254 decode almost any byte string).
- A cache that fails to load (truncated, empty, random bytes, written by another version) is deleted and
  rebuilt with one warning line naming it: a cache is derived data, never a reason to stop a run.
- Caches are written through ``atomic_path`` (one file), ``atomic_dir`` (a folder) or ``atomic_file_group``
  (a file with side files), with the mode the umask gives, so a shared cache folder stays readable.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from common.errors import InputError, MissingInputError

T = TypeVar("T")

EXPECTED_ENCODING = "UTF-8"


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed to ``path`` in one step.

    Several DDP ranks (or an interrupted run) may build the same cache: a reader then sees either no file or a
    complete one, never a truncated one. On error the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    os.chmod(
        temporary, _DEFAULT_FILE_MODE
    )  # mkstemp makes 0600; a shared cache must be readable by colleagues
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``path``; on success it replaces the folder ``path`` as a unit.

    For artefacts made of several files (``save_pretrained`` folders, caches with side files): a reader sees the
    old folder or the complete new one, never a mix. An existing ``path`` is moved aside first and removed after
    the rename (POSIX cannot rename over a non-empty folder). On error the temporary folder is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(temporary, _DEFAULT_DIR_MODE)
    try:
        yield temporary
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(temporary, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


@contextmanager
def atomic_file_group(path: str | Path) -> Iterator[Path]:
    """Yield ``<temporary folder>/<name of path>``; on success every file written there moves next to ``path``.

    For writers that add side files to the name they are given (gensim's ``save`` puts arrays of 10M+ elements
    in ``<name>.wv.vectors_ngrams.npy`` and so on): the side files are moved first and the main file last, so a
    reader that finds the main file finds its side files too. Stale side files of an older group are removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield folder / path.name
        written = sorted(folder.iterdir())
        if not any(f.name == path.name for f in written):
            raise FileNotFoundError(f"{path}: the writer produced no main file")
        written_names = {f.name for f in written}
        for stale in path.parent.glob(f"{glob.escape(path.name)}.*"):
            if stale.is_file() and stale.name not in written_names:
                stale.unlink()
        for file in written:
            if file.name != path.name:
                os.chmod(file, _DEFAULT_FILE_MODE)
                os.replace(file, path.parent / file.name)
        os.chmod(folder / path.name, _DEFAULT_FILE_MODE)
        os.replace(folder / path.name, path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()
_DEFAULT_FILE_MODE = 0o666 & ~_UMASK
_DEFAULT_DIR_MODE = 0o777 & ~_UMASK


def decode_text(data: bytes, source: str | Path) -> str:
    """Decode ``data`` as UTF-8 (BOM allowed); on failure raise one ``InputError`` naming ``source:line``."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        byte = data[error.start : error.start + 1].hex()
        raise InputError(
            f"{source}:{line}: not {EXPECTED_ENCODING} (byte 0x{byte} at column {column}); "
            f"save the file as {EXPECTED_ENCODING}, e.g. `iconv -f cp1254 -t utf-8 IN > OUT`"
        ) from None


def read_text(path: str | Path) -> str:
    """The whole file as a ``str``; a missing file or non-UTF-8 bytes are one-line ``InputError``s."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise MissingInputError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, expected a text file") from None
    return decode_text(data, path)


def read_lines(path: str | Path) -> list[str]:
    """The file's lines without their line endings (``\\n`` or ``\\r\\n``); see ``read_text``."""
    return read_text(path).splitlines()


def load_cache(path: str | Path, load: Callable[[Path], T], what: str = "cache") -> T | None:
    """``load(path)``, or ``None`` when there is no usable cache at ``path`` (the caller then rebuilds it).

    A cache that exists but cannot be loaded (any exception from ``load``: truncated, empty, random bytes, a
    format from another version) is removed with one warning line naming it. Load torch caches with
    ``weights_only=True`` inside ``load``.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        return load(path)
    except Exception as error:  # noqa: BLE001 - any failure to read derived data means: rebuild it
        reason = str(error).strip().splitlines()[0][:160] if str(error).strip() else ""
        warnings.warn(
            f"{what} {path} could not be loaded ({type(error).__name__}: {reason}); rebuilding it",
            UserWarning,
            stacklevel=2,
        )
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        return None
