"""File checks of `rollback-bot doctor` (see core.doctor): the trading log, MODELS_DIR and each production model.

File rights are those of this process's effective user (``os.access(..., effective_ids=True)``): run the doctor
as the user the bot runs as. Nothing here changes anything or raises for a broken platform.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import psycopg

from core.doctor import Check
from core.errors import BackupCorrupt, RollbackError
from core.modelio import METADATA_FILE, MODEL_FILE, load_booster, read_metadata, sha256_file
from core.platform import FEATURE_VIEW
from core.registry import validate_name


# ------------------------------------------------------------------------------------------ trades log

def trades_log_checks(settings: Any) -> list[Check]:
    path: Path | None = settings.trading_log
    if path is None:
        return []
    name = "trades source TRADING_LOG"
    fix = "point TRADING_LOG at the trading log the platform writes, readable by the bot's user, or unset it"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return [Check(name, False, f"{path} does not exist", fix, area="trades", rollback=True)]
    except OSError as exc:
        return [Check(name, False, f"{path} cannot be reached ({exc.strerror})", fix, area="trades", rollback=True)]
    if not stat.S_ISREG(st.st_mode):
        return [Check(name, False, f"{path} is not a file", fix, area="trades", rollback=True)]
    if not _can(path, os.R_OK):
        return [Check(name, False, f"{path} is not readable by {_who()} ({_mode(st)})", fix, area="trades",
                      rollback=True)]
    return [Check(name, True, f"{path} is readable", area="trades", rollback=True)]


# ------------------------------------------------------------------------------------------ models


def _can(path: Path, mode: int) -> bool:
    if os.access in os.supports_effective_ids:
        return os.access(path, mode, effective_ids=True)
    return os.access(path, mode)


def _who() -> str:
    return f"uid {os.geteuid()}"


def _mode(st: os.stat_result) -> str:
    return f"mode {stat.S_IMODE(st.st_mode):03o}, owner uid {st.st_uid} gid {st.st_gid}"


_RIGHTS = (("readable", os.R_OK, "read"), ("writable", os.W_OK, "write"), ("searchable", os.X_OK, "search"))


def _folder_problem(path: Path, what: str, *, write: bool = True) -> tuple[str, str] | None:
    """(problem, fix) when ``path`` is not a folder the bot may list and enter (and, with ``write``, write); else
    None."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return f"{what} {path} does not exist", f"create {path} or set MODELS_DIR"
    except OSError as exc:
        return f"{what} {path} cannot be reached ({exc.strerror})", "let the bot's user enter every folder above it"
    if not stat.S_ISDIR(st.st_mode):
        return f"{what} {path} is not a folder", "set MODELS_DIR to the folder holding the model folders"
    needed = [r for r in _RIGHTS if write or r[1] != os.W_OK]
    lacking = [n for n, m, _ in needed if not _can(path, m)]
    if lacking:
        words = lacking[0] if len(lacking) == 1 else ", ".join(lacking[:-1]) + " or " + lacking[-1]
        rights = ", ".join(r for _, _, r in needed[:-1]) + " and " + needed[-1][2]
        return (f"{what} {path} is not {words} by {_who()} ({_mode(st)})",
                f"give {_who()} {rights} rights on {path} (chown/chmod or an ACL)")
    return None


def models_dir_check(models_dir: Path) -> Check:
    # The bot lists and enters MODELS_DIR; it writes only inside the model folders (checked one by one).
    found = _folder_problem(models_dir, "MODELS_DIR", write=False)
    if found:
        return Check("MODELS_DIR", False, found[0], found[1], area="models", rollback=True)
    return Check("MODELS_DIR", True, f"{models_dir} is readable and searchable by {_who()}", area="models",
                 rollback=True)


def model_folder_rights(models_dir: Path, model: str) -> Check:
    """The rights a rollback of ``model`` needs on its folder (it writes model.json there and adds backups)."""
    name = f"model {model}"
    path = Path(models_dir) / model
    if not os.path.lexists(path):
        return Check(name, True, f"{path} does not exist (nothing to check)", area="models", model=model)
    found = _folder_problem(path, "model folder")
    if found:
        return Check(name, False, found[0], found[1], area="models", rollback=True, model=model)
    return Check(name, True, f"{path} is readable, writable and searchable", area="models", rollback=True, model=model)


def production_model_checks(conn: psycopg.Connection, models_dir: Path) -> list[Check]:
    """Each production model (model_deployment_log): folder rights, files load, features exist, checksums match the
    backup of the production version when that folder exists. ``conn`` is in autocommit mode."""
    try:
        rows = conn.execute(
            "SELECT model_name::text, version::text FROM model_deployment_log WHERE is_production IS TRUE"
            " ORDER BY model_name, deployed_at DESC"
        ).fetchall()
    except psycopg.Error as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return [Check("production models", False, f"not checked: model_deployment_log cannot be read ({first})",
                      "fix model_deployment_log first (see above)", area="models")]
    versions: dict[str, list[str]] = {}
    for r in rows:
        versions.setdefault(r["model_name"], []).append(r["version"])
    if not versions:
        return [Check("production models", True, "model_deployment_log marks no model as production", area="models")]
    view = {r["attname"] for r in conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
        (FEATURE_VIEW,))}
    return [_model_check(models_dir, model, vs, view) for model, vs in sorted(versions.items())]


def _model_check(models_dir: Path, model: str, versions: list[str], view: set[str]) -> Check:
    name = f"model {model}"
    try:
        validate_name(model, "model")
    except RollbackError as exc:
        return Check(name, False, str(exc), "correct the model_name in model_deployment_log", area="models",
                     model=model)
    rights = model_folder_rights(models_dir, model)
    if not rights.ok:
        return rights
    folder = Path(models_dir) / model
    if not folder.is_dir():
        return Check(name, False, f"model_deployment_log marks {model} as production but {folder} does not exist",
                     f"restore the folder {folder} or correct model_deployment_log", area="models", model=model)
    problems = []
    if len(versions) > 1:
        problems.append(f"{len(versions)} rows of model_deployment_log mark it as production")
    try:
        meta = read_metadata(folder)
        booster = load_booster(folder / MODEL_FILE)
    except BackupCorrupt as exc:
        return Check(name, False, f"{exc}", f"restore it: `/rollback diagnose {model}` offers *Restore corrupt model"
                     f" file*, or roll back to a backup", area="models", model=model)
    if booster.num_features() != len(meta.features):
        problems.append(f"model.json expects {booster.num_features()} features, metadata.json lists {len(meta.features)}")
    missing = [f for f in meta.features if f not in view]
    if view and missing:
        problems.append(f"{FEATURE_VIEW} lacks {', '.join(missing[:8])}")
    version = versions[0]
    backup = folder / version
    compared = ""
    if version and version.startswith("backup_") and (backup / MODEL_FILE).is_file():
        try:
            differ = [f for f in (MODEL_FILE, METADATA_FILE) if sha256_file(folder / f) != sha256_file(backup / f)]
        except OSError as exc:
            differ = []
            problems.append(f"the backup {version} cannot be read ({exc.strerror})")
        if differ:
            problems.append(f"{' and '.join(differ)} differ from the backup {version} that model_deployment_log names"
                            " as production")
        else:
            compared = f"; files match {version}"
    if problems:
        return Check(name, False, "; ".join(problems),
                     f"compare with `/rollback status {model}` and `/rollback diagnose {model}`; roll back or correct"
                     " model_deployment_log", area="models", model=model)
    return Check(name, True, f"production {version}: model.json and metadata.json load, {len(meta.features)} features"
                 f" in {FEATURE_VIEW}{compared}", area="models", model=model)
