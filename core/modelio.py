"""Model files: metadata parsing, loading with xgboost, checksums, and crash-safe file operations.

Files are only ever replaced atomically: written to a temporary file in the same folder, fsync'd, then
``os.replace``d over the destination and the folder fsync'd, so no reader sees a half-written model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from datetime import date
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from core.errors import BackupCorrupt

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


def read_metadata(folder: Path) -> Metadata:
    path = folder / METADATA_FILE
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BackupCorrupt(f"{folder.name}: {METADATA_FILE} is missing") from None
    except OSError as exc:
        raise BackupCorrupt(f"{folder.name}: {METADATA_FILE} cannot be read ({exc.strerror})") from None
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BackupCorrupt(f"{folder.name}: {METADATA_FILE} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise BackupCorrupt(f"{folder.name}: {METADATA_FILE} is not a JSON object")
    try:
        return Metadata.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "metadata"
        msg = err["msg"].removeprefix("Value error, ")
        raise BackupCorrupt(f"{folder.name}: {METADATA_FILE} field {where}: {msg}") from None


def load_booster(path: Path) -> Any:
    """Load an XGBoost model file; any failure is a BackupCorrupt naming the file."""
    import xgboost  # imported lazily: it takes a while and most commands do not need it

    if not path.is_file():
        raise BackupCorrupt(f"{path.parent.name}: {path.name} is missing")
    try:
        return xgboost.Booster(model_file=str(path))
    except Exception as exc:  # noqa: BLE001 - xgboost raises XGBoostError or ValueError for bad files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BackupCorrupt(f"{path.parent.name}: {path.name} does not load with xgboost ({first[:200]})") from None


def load_booster_if_identical(path: Path, sha256: str) -> Any | None:
    """The model file at ``path`` parsed from one read of its bytes, if those bytes have the checksum
    ``sha256``; None when the file is missing, different or does not load (the caller then loads the file it
    must check and reports what is wrong with it)."""
    import xgboost

    try:
        data = path.read_bytes()
    except OSError:
        return None
    if hashlib.sha256(data).hexdigest() != sha256:
        return None
    try:
        return xgboost.Booster(model_file=bytearray(data))
    except Exception:  # noqa: BLE001 - see above: the file in place is loaded and checked instead
        return None


def predict(booster: Any, features: list[str], rows: Any) -> Any:
    import numpy as np
    import xgboost

    matrix = xgboost.DMatrix(np.asarray(rows, dtype=float), feature_names=list(features), missing=float("nan"))
    return booster.predict(matrix)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_copy(src: Path, dst: Path) -> None:
    """Copy ``src`` over ``dst`` so that ``dst`` is always either the old or the complete new file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
            shutil.copyfileobj(inp, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(dst.parent)


def copy_folder_atomically(src_files: list[Path], dst: Path) -> None:
    """Create folder ``dst`` holding copies of ``src_files``; it appears complete or not at all."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent))
    try:
        for src in src_files:
            with open(src, "rb") as inp, open(tmp / src.name, "wb") as out:
                shutil.copyfileobj(inp, out, 1 << 20)
                out.flush()
                os.fsync(out.fileno())
        fsync_dir(tmp)
        os.rename(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(dst.parent)

