"""Model files: metadata parsing, loading with xgboost, checksums, and crash-safe file operations.

Files are only ever replaced atomically: written to a temporary file in the same folder, given the owner,
group and mode of the file it replaces (``core.fileattrs``), fsync'd, then ``os.replace``d over the
destination and the folder fsync'd, so no reader sees a half-written model or one it may not read.
Model files are read only when they are regular files of a sane size, never through a symbolic link
(``core.fileguard``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import stat
import tempfile
from datetime import date
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from core.errors import BackupCorrupt
from core.atomicfile import atomic_write, seal_folder
from core.fileattrs import Attrs, file_attrs, folder_attrs
from core.fileguard import DEFAULT_MAX_MODEL_BYTES, MAX_METADATA_BYTES, UnsafeFile, open_regular, read_regular

MODEL_FILE = "model.json"
METADATA_FILE = "metadata.json"
MODEL_FILES = (MODEL_FILE, METADATA_FILE)


class Performance(BaseModel):
    model_config = ConfigDict(extra="allow")
    spearman_ic: float
    sharpe_ratio: float

    @field_validator("spearman_ic", "sharpe_ratio")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v


class Metadata(BaseModel):
    """The platform's metadata.json; other keys may be present and are kept."""

    model_config = ConfigDict(extra="allow")
    training_date: date
    performance: Performance
    features: list[str] = Field(min_length=1)

    @field_validator("features")
    @classmethod
    def _features(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("feature names repeat")
        for name in v:
            if not name or not name.replace("_", "a").isalnum():
                raise ValueError(f"feature name {name!r} is not a plain column name")
        return v


MAX_JSON_DEPTH = 64  # metadata.json nests a few levels; deeper is refused before validation recurses into it


def _too_deep(data: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``data`` (parsed JSON) nests deeper than ``limit``; iterative, so it never recurses itself."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            value = list(value.values())
        elif not isinstance(value, list):
            continue
        if depth > limit:
            return True
        stack.extend((v, depth + 1) for v in value if isinstance(v, (dict, list)))
    return False


def _read_model_file(path: Path, **limits: Any) -> bytes:
    """A model folder's file (core.fileguard's ``read_regular``); any failure is a BackupCorrupt naming it."""
    try:
        return read_regular(path, **limits)
    except FileNotFoundError:
        raise BackupCorrupt(f"{path.parent.name}: {path.name} is missing") from None
    except UnsafeFile as exc:
        raise BackupCorrupt(f"{path.parent.name}: {path.name} is refused: {exc.strerror}") from None
    except OSError as exc:
        raise BackupCorrupt(f"{path.parent.name}: {path.name} cannot be read ({exc.strerror})") from None


def read_metadata(folder: Path) -> Metadata:
    raw = _read_model_file(folder / METADATA_FILE, max_bytes=MAX_METADATA_BYTES)
    try:
        data = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise BackupCorrupt(f"{folder.name}: {METADATA_FILE} nests too deeply to be a metadata file") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, and ints too long to convert
        raise BackupCorrupt(f"{folder.name}: {METADATA_FILE} is not valid JSON ({str(exc)[:200]})") from None
    if not isinstance(data, dict):
        raise BackupCorrupt(f"{folder.name}: {METADATA_FILE} is not a JSON object")
    if _too_deep(data):
        raise BackupCorrupt(f"{folder.name}: {METADATA_FILE} nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        return Metadata.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "metadata"
        msg = err["msg"].removeprefix("Value error, ")
        raise BackupCorrupt(f"{folder.name}: {METADATA_FILE} field {where}: {msg}") from None


def load_booster(path: Path, *, max_bytes: int = DEFAULT_MAX_MODEL_BYTES) -> Any:
    """Load an XGBoost model file (a regular file of at most ``max_bytes``, never through a symbolic link);
    any failure is a BackupCorrupt naming the file."""
    import xgboost  # imported lazily: it takes a while and most commands do not need it

    data = _read_model_file(path, max_bytes=max_bytes, setting="MAX_MODEL_BYTES")
    try:
        return xgboost.Booster(model_file=data)
    except Exception as exc:  # noqa: BLE001 - xgboost raises XGBoostError or ValueError for bad files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BackupCorrupt(f"{path.parent.name}: {path.name} does not load with xgboost ({first[:200]})") from None


def load_booster_if_identical(path: Path, sha256: str, *, max_bytes: int = DEFAULT_MAX_MODEL_BYTES) -> Any | None:
    """The model file at ``path`` parsed from one read of its bytes, if those bytes have the checksum
    ``sha256``; None when the file is missing, different or does not load (the caller then loads the file it
    must check and reports what is wrong with it)."""
    import xgboost

    try:
        data = read_regular(path, max_bytes=max_bytes)
    except OSError:
        return None
    if hashlib.sha256(data).hexdigest() != sha256:
        return None
    try:
        return xgboost.Booster(model_file=data)
    except Exception:  # noqa: BLE001 - see above: the file in place is loaded and checked instead
        return None


def predict(booster: Any, features: list[str], rows: Any) -> Any:
    import numpy as np
    import xgboost

    matrix = xgboost.DMatrix(np.asarray(rows, dtype=float), feature_names=list(features), missing=float("nan"))
    return booster.predict(matrix)


def sha256_file(path: Path) -> str:
    """The checksum of a regular file; a symbolic link, FIFO or device is an UnsafeFile (an OSError)."""
    h = hashlib.sha256()
    with open_regular(path) as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_copy(src: Path, dst: Path) -> None:
    """Copy ``src`` (a regular file, not a link) over ``dst`` so that ``dst`` is always either the old or the
    complete new file, with the owner, group and mode of the file it replaces (the other model file's, or
    the folder's, when there is none: ``core.fileattrs``)."""
    want = file_attrs(dst, siblings=[dst.parent / f for f in MODEL_FILES if f != dst.name])
    with open_regular(src) as inp:
        atomic_write(dst, lambda out: shutil.copyfileobj(inp, out, 1 << 20), attrs=want)


def sibling_backups(folder: Path, exclude: str) -> list[Path]:
    """The real ``backup_*`` folders of a model folder: the platform's own first (emergency backups an older
    bot took came out 0700), most recently changed first."""
    found = []
    for entry in folder.iterdir():
        if not entry.name.startswith("backup_") or entry.name == exclude:
            continue
        try:
            st = entry.lstat()
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            found.append((not entry.name.startswith("backup_emergency_"), st.st_mtime_ns, entry.name, entry))
    return [entry for *_, entry in sorted(found, reverse=True)]


def backup_file_attrs(model_dir: Path, name: str, *, siblings: list[Path], fallback: Path | None = None) -> Attrs:
    """The rights of file ``name`` in a new backup of ``model_dir``: those of the same file in the most recent
    sibling backup (``siblings``, from ``sibling_backups``); without one, those of ``fallback`` (the file it
    copies) or else of the model's own file. A file that is not a model file gets metadata.json's."""
    if siblings:
        like = siblings[0]
    elif fallback is not None:
        return file_attrs(fallback)
    else:
        like = model_dir
    key = name if name in MODEL_FILES else METADATA_FILE
    return file_attrs(like / key, siblings=[like / f for f in MODEL_FILES if f != key])


def copy_folder_atomically(src_files: list[Path], dst: Path) -> None:
    """Create folder ``dst`` holding copies of ``src_files``; it appears complete or not at all.

    ``dst`` is a new ``backup_*`` folder beside others: it gets the owner, group and mode of the most recent
    sibling backup (of the model folder itself when there is none), and each file those of the same file in
    that backup (of the file it copies when there is none): ``backup_file_attrs``, ``core.atomicfile``."""
    siblings = sibling_backups(dst.parent, dst.name)
    sources = {src.name: src for src in src_files}
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent))
    try:
        for src in src_files:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            with open_regular(src, follow=True) as inp, os.fdopen(os.open(tmp / src.name, flags, 0o600), "wb") as out:
                shutil.copyfileobj(inp, out, 1 << 20)
        seal_folder(tmp, dst, folder=folder_attrs(dst.parent, like=siblings[:1]),
                    attrs_of=lambda name: backup_file_attrs(dst.parent, name, siblings=siblings,
                                                            fallback=sources[name]))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
