"""Benchmark: ``/rollback status`` and ``/rollback backups`` with 50, 500 and 5000 models of 50 backups each.

    python -m bench scale                   # about a minute on 2 cores (5000 models: 250 000 backup folders)
    python -m bench scale --sizes 50 500    # quicker

The generated world (``bench.common``) gets N more models, ``scale_00000`` …, each with production files and
50 ``backup_*`` folders: every backup has its own metadata.json; three per model also have a real XGBoost
model.json (hard links to the world's trained models, so they load, predict and can be recommended), the
others none (listed, reported as unusable). ``model_deployment_log`` gets one row per backup, the newest
marked production. Sizes are built incrementally (50, then 450 more, …).

Timed at each size, through the service layer the Slack handlers and the CLI call:

* ``Services.status()`` (what ``/rollback status`` renders), median of several calls;
* ``Services.backups(model=…)`` for one model (its backups, with the recommendation by live performance),
  cold (first call) and warm (median after it; model loads are cached by file size and mtime).

At 500 models both commands also go through the real app over signed HTTP (``bot.devtools.sandbox``): from the request
to the answer arriving at the ``response_url`` of the Slack stand-in, Block Kit included.

Targets: 500 models answered within 1 s; growth at most linear (time(5000)/time(500) <= 10, i.e. a log-log
slope <= 1, computed on the best of the repeated calls, the least disturbed by other load; a slope above 1.15
fails, to leave room for noise). Exit status 0 unless something broke.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from bench.common import BenchWorld, bench_world, table

NAME = "scale"
BACKUPS_PER_MODEL = 50
REAL_BACKUPS_PER_MODEL = 3
PREFIX = "scale_"
TARGET_SIZE = 500
TARGET_SECONDS = 1.0
MAX_SLOPE = 1.15  # linear is 1.0


# ------------------------------------------------------------------------------------------- generation


def scratch_models_dir(bw: BenchWorld) -> Path:
    """A copy of the world's models on a RAM file system when there is room (/dev/shm): creating and removing
    a quarter of a million folders there takes seconds instead of a minute; else next to the world."""
    need = 2 << 30
    shm = Path("/dev/shm")
    parent = bw.root
    try:
        st = os.statvfs(shm)
        if shm.is_dir() and os.access(shm, os.W_OK) and st.f_bavail * st.f_frsize > need:
            parent = Path(tempfile.mkdtemp(prefix="rollback-bench-scale-", dir=shm))
    except OSError:
        pass
    dest = parent / "scale-models"
    shutil.copytree(bw.models_dir, dest)
    return dest


class Generator:
    """Adds synthetic models to a copy of the world's MODELS_DIR and their rows to model_deployment_log."""

    def __init__(self, bw: BenchWorld) -> None:
        self.bw = bw
        self.count = 0
        self.models_dir = scratch_models_dir(bw)
        source = bw.world.models["growth_momentum_large"]  # trained on every feature of the view
        self.real = [self.models_dir / source.name / b.name for b in source.backups]  # oldest first; distinct
        meta = json.loads((self.real[-1] / "metadata.json").read_text())
        base = date(2021, 1, 4)
        self.backup_names = [f"backup_{base + timedelta(days=7 * k):%Y-%m-%d}" for k in range(BACKUPS_PER_MODEL)]
        self.backup_meta = []
        for k in range(BACKUPS_PER_MODEL):
            m = dict(meta, training_date=(base + timedelta(days=7 * k)).isoformat())
            m["performance"] = {"spearman_ic": round(0.02 + 0.001 * (k % 17), 4),
                                "sharpe_ratio": round(0.5 + 0.05 * (k % 23), 3)}
            self.backup_meta.append(json.dumps(m).encode())
        self.production_meta = json.dumps(dict(meta, training_date=(base + timedelta(days=7 * BACKUPS_PER_MODEL))
                                               .isoformat())).encode()

    def name(self, i: int) -> str:
        return f"{PREFIX}{i:05d}"

    def grow(self, total: int) -> float:
        """Bring the number of synthetic models to ``total``; returns the seconds it took."""
        t0 = time.perf_counter()
        models_dir = self.models_dir
        rows = []
        deployed0 = datetime(2021, 1, 5, 6, 30, tzinfo=timezone.utc)
        for i in range(self.count, total):
            name = self.name(i)
            folder = models_dir / name
            folder.mkdir()
            os.link(self.real[-1] / "model.json", folder / "model.json")
            (folder / "metadata.json").write_bytes(self.production_meta)
            for k, backup in enumerate(self.backup_names):
                bdir = folder / backup
                bdir.mkdir()
                with open(bdir / "metadata.json", "wb") as fh:
                    fh.write(self.backup_meta[k])
                if k >= BACKUPS_PER_MODEL - REAL_BACKUPS_PER_MODEL:  # the newest three: real models
                    os.link(self.real[k % (len(self.real) - 1)] / "model.json", bdir / "model.json")
                rows.append((name, backup, deployed0 + timedelta(days=7 * k), "ml-pipeline", "scheduled retrain",
                             False, False, 0.03, 1.0))
            rows.append((name, f"v{i}-current", deployed0 + timedelta(days=7 * BACKUPS_PER_MODEL), "ml-pipeline",
                         "scheduled retrain", True, False, 0.03, 1.0))
        with self.bw.connect() as conn:
            with conn.cursor().copy(
                "COPY model_deployment_log (model_name, version, deployed_at, deployed_by, deployment_reason,"
                " is_production, is_rollback, spearman_ic, sharpe_ratio) FROM STDIN"
            ) as copy:
                for row in rows:
                    copy.write_row(row)
            conn.execute("ANALYZE model_deployment_log")
        self.count = total
        return time.perf_counter() - t0

    def settings(self, **overrides):
        return self.bw.settings(models_dir=self.models_dir, **overrides)

    def clean(self) -> None:
        with self.bw.connect() as conn:
            conn.execute("DELETE FROM model_deployment_log WHERE model_name LIKE %s", (PREFIX + "%",))
        shutil.rmtree(self.models_dir.parent if self.models_dir.parent != self.bw.root else self.models_dir,
                      ignore_errors=True)


# ------------------------------------------------------------------------------------------- timing


def timed(fn, repeats: int) -> tuple[float, float, float, object]:
    """(first call, median and best of the next ``repeats`` calls, last result), seconds."""
    t0 = time.perf_counter()
    result = fn()
    first = time.perf_counter() - t0
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        samples.append(time.perf_counter() - t0)
    return first, statistics.median(samples) if samples else first, min(samples, default=first), result


def over_http(gen: Generator, model: str, repeats: int = 3) -> dict[str, float]:
    """``/rollback status`` and ``/rollback backups MODEL`` through the real app: request to answer."""
    from bot.devtools.sandbox import Sandbox
    from bot.devtools.slack_standin import SlackStandIn
    from core.db import Database
    from bot.compose import build_services

    out: dict[str, float] = {}
    with SlackStandIn() as standin:
        settings = gen.settings(slack_api_url=standin.base_url, slack_bot_token="xoxb-bench-scale",
                               slack_signing_secret="bench-scale-secret", incident_channel="C0INCIDENT",
                               approvers=["U0BOB"])
        db = Database(settings.database_dsn(), max_size=settings.db_pool_max).open()
        try:
            with Sandbox(build_services(settings, db), standin=standin) as box:
                for label, text in (("status", "status"), ("backups", f"backups {model}")):
                    samples = []
                    for _ in range(repeats + 1):  # the first one warms up (auth.test, imports, caches)
                        t0 = time.perf_counter()
                        reply = box.command("U0ALICE", text)
                        body = box.responses(reply.response_key, timeout=120)[0]
                        samples.append(time.perf_counter() - t0)
                        if reply.status != 200 or "went wrong" in body.get("text", ""):
                            raise RuntimeError(f"/rollback {text} failed: {reply.status} {body.get('text')}")
                    out[label] = statistics.median(samples[1:])
        finally:
            db.close()
    return out


def slope(t_small: float, t_big: float, n_small: int, n_big: int) -> float:
    """Log-log growth exponent between two sizes (1.0: linear)."""
    if t_small <= 0 or t_big <= 0:
        return float("nan")
    return math.log(t_big / t_small) / math.log(n_big / n_small)


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 500, 5000],
                        help="numbers of models (default 50 500 5000)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement after the first")
    args = parser.parse_args(argv)
    sizes = sorted(set(args.sizes))
    started = time.perf_counter()
    print("preparing the generated world ...", flush=True)
    results: dict[int, dict[str, float]] = {}
    http: dict[str, float] = {}
    with bench_world() as bw:
        from core.db import Database
        from bot.compose import build_services

        gen = Generator(bw)
        probe = gen.name(0)
        try:
            for n in sizes:
                built = gen.grow(n)
                settings = gen.settings()
                db = Database(settings.database_dsn(), max_size=4).open()
                try:
                    services = build_services(settings, db)
                    repeats = max(1, args.repeats)
                    s_first, s_med, s_min, report = timed(services.status, repeats)
                    b_first, b_med, b_min, backups = timed(lambda: services.backups(model=probe), repeats)
                finally:
                    db.close()
                total_models = len(report.models)
                rec = backups.recommendation.backup
                if len(backups.backups) != BACKUPS_PER_MODEL or rec is None:
                    raise RuntimeError(f"unexpected backups report for {probe}: {len(backups.backups)} backups,"
                                       f" recommended {rec}")
                results[n] = {"status": s_med, "status_first": s_first, "status_best": s_min, "backups": b_med,
                              "backups_first": b_first, "backups_best": b_min, "models": total_models,
                              "built": built}
                print(f"  {n:>5} models (+{total_models - n} of the world): built in {built:5.1f} s; "
                      f"status {s_med * 1000:7.1f} ms; backups {b_med * 1000:7.1f} ms "
                      f"(cold {b_first * 1000:.0f} ms; recommends {rec.name})", flush=True)
                if n == TARGET_SIZE:
                    http = over_http(gen, probe)
                    print(f"        over HTTP: /rollback status {http['status'] * 1000:.0f} ms,"
                          f" /rollback backups {http['backups'] * 1000:.0f} ms", flush=True)
        finally:
            gen.clean()

    rows = []
    for n in sizes:
        r = results[n]
        rows.append([str(n), f"{r['status'] * 1000:.1f}", f"{r['status_best'] * 1000:.1f}",
                     f"{r['status_first'] * 1000:.1f}", f"{r['backups'] * 1000:.1f}", f"{r['backups_best'] * 1000:.1f}",
                     f"{r['backups_first'] * 1000:.1f}"])
    print()
    print(f"time per call (ms), service layer, measured in this run (median and best of {args.repeats}, then the"
          " first call)")
    print(table(rows, ["models", "status", "best", "1st", "backups", "best", "1st (cold)"]))
    print()
    verdicts = []
    growth_rows = []
    for a, b in zip(sizes, sizes[1:]):
        for what in ("status", "backups"):
            best = what + "_best"  # the least disturbed by other load on the machine
            ratio = results[b][best] / results[a][best]
            k = slope(results[a][best], results[b][best], a, b)
            ok = k <= MAX_SLOPE
            verdicts.append(ok)
            growth_rows.append([what, f"{a} -> {b}", f"{ratio:.2f}x", f"{b / a:.0f}x", f"{k:.2f}",
                                "PASS" if ok else "FAIL"])
    if growth_rows:
        print(f"growth of the best times (target: at most linear, log-log slope <= 1; FAIL above {MAX_SLOPE})")
        print(table(growth_rows, ["command", "models", "time ratio", "size ratio", "slope", "verdict"]))
        print()
    if TARGET_SIZE in results:
        r = results[TARGET_SIZE]
        checks = [("status (service)", r["status"]), ("backups (service)", r["backups"])]
        checks += [(f"{k} (over HTTP)", v) for k, v in http.items()]
        target_rows = []
        for label, seconds in checks:
            ok = seconds <= TARGET_SECONDS
            verdicts.append(ok)
            target_rows.append([label, f"{seconds * 1000:.0f} ms", f"{seconds / TARGET_SECONDS:.2f}x of 1 s",
                                "PASS" if ok else "FAIL"])
        print(f"{TARGET_SIZE} models answered within {TARGET_SECONDS:g} s")
        print(table(target_rows, ["command", "time", "ratio", "verdict"]))
        print()
    print("scale target: " + ("PASS" if all(verdicts) else "FAIL"))
    print(f"(bench scale took {time.perf_counter() - started:.0f} s)")
    return 0


def main() -> int:
    return run(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
