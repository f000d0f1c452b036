"""Benchmark: machine time of a whole rollback of a 2000-tree XGBoost model, against the floor measured in the
same run.

    python -m bench rollback [--runs N] [--trees 2000] [--depth 6]

A model folder ``bench_large`` is added to the generated world: two 2000-tree boosters trained on the world's
own features (production, and an older backup that is the rollback's target), with a deployment row each.
Each run puts production back, requests the rollback (pre-flight happens at request time, before approval),
then times, through the real engine, ``approve`` + ``execute``:

* approval → halted: until the engine reports the state ``halted`` (the halt's transaction has committed);
* approval → resumed: until trading is resumed on the verified model (state ``monitoring``).

The floor is the least work any rollback of this model must do, measured the same way: two fsync'd copies of
model.json + metadata.json (out into the emergency backup, in from the backup; ``core.modelio.atomic_copy``),
one ``xgboost.Booster`` load and predict on the latest day's rows (verification), and one database
transaction (reads those rows and writes the deployment log). Targets: rollback <= 1.5x the floor; halted
within 0.2 s of approval. The report never fails the build: the exit status is 0 unless something broke.

After the halt the swap waits until the trades source has had no trade for ``HALT_QUIET_SECONDS`` (3 s by
default; ``core.halt_watch``). That wait is for the platform, not machine work: it is printed on its own line
beside the floor, and the resumed-vs-floor ratio is taken without it (approval → resumed, less the wait).

The floor adds its parts one after the other. Once trading is halted, the engine parses the approved model
on a thread of its own while the backup, restore and record steps wait for the disk and PostgreSQL. That
parse is then most of the verify step.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from datetime import timedelta
from pathlib import Path

from bench.common import BenchWorld, bench_world, median, table

NAME = "rollback"
MODEL = "bench_large"
ROLLBACK_TARGET_RATIO = 1.5
HALTED_TARGET_SECONDS = 0.2
STEPS = ("preflight", "halt", "verify_halt", "emergency_backup", "restore", "record", "verify", "resume")
QUIET = "quiet_wait"  # the halt's wait for a quiet trades source (HALT_QUIET_SECONDS): not machine work


def add_model(bw: BenchWorld, *, trees: int, depth: int, seed: int) -> tuple[str, str, float]:
    """Train the production model and an older backup (``trees`` trees each) on the world's features, write
    them under ``MODEL``, and record them in the deployment log. Returns (production, target, seconds)."""
    import numpy as np
    import xgboost

    from bot.devtools.demo_world import load_features, train_model, write_model_dir
    from core.metrics import evaluate

    t0 = time.perf_counter()
    features = list(bw.world.features)
    with bw.connect() as conn:
        dates, _, X, y = load_features(conn, features=features, require_label=True)
    days = np.unique(dates)
    half = days[len(days) // 2]
    holdout = days[-20:]
    folder = bw.models_dir / MODEL
    names = []
    for k, (lo, hi) in enumerate([(days[0], half), (half, holdout[0])]):  # older backup first
        train = (dates >= lo) & (dates < hi)
        booster = train_model(X[train], y[train], features, n_trees=trees, max_depth=depth, seed=seed + k)
        test = dates >= holdout[0]
        perf = evaluate(dates[test], booster.predict(xgboost.DMatrix(X[test], feature_names=features)), y[test])
        name = f"backup_{str(hi)}"
        write_model_dir(folder / name, booster, {
            "model_name": MODEL, "training_date": str(hi), "performance": perf.as_dict(), "features": features,
            "n_trees": trees, "max_depth": depth,
        })
        names.append(name)
    target, production = names
    for f in ("model.json", "metadata.json"):
        shutil.copyfile(folder / production / f, folder / f)
    with bw.connect() as conn:
        conn.execute("DELETE FROM model_deployment_log WHERE model_name = %s", (MODEL,))
        for i, name in enumerate(names):
            meta = json.loads((folder / name / "metadata.json").read_text())
            conn.execute(
                "INSERT INTO model_deployment_log (model_name, version, deployed_at, deployed_by, deployment_reason,"
                " is_production, is_rollback, spearman_ic, sharpe_ratio)"
                " VALUES (%s, %s, now() - %s, 'bench', 'benchmark model', %s, false, %s, %s)",
                (MODEL, name, timedelta(days=30 * (2 - i)), name == production,
                 meta["performance"]["spearman_ic"], meta["performance"]["sharpe_ratio"]),
            )
    bw.snapshot()
    return production, target, time.perf_counter() - t0


def put_production_back(bw: BenchWorld, production: str) -> None:
    folder = bw.models_dir / MODEL
    for entry in folder.iterdir():
        if entry.is_dir() and entry.name.startswith("backup_emergency_"):
            shutil.rmtree(entry)
    for f in ("model.json", "metadata.json"):
        shutil.copyfile(folder / production / f, folder / f)
    bw.reset()


def time_rollback(bw: BenchWorld, services, production: str, target: str) -> tuple[float, float, dict[str, float]]:
    """One rollback through the real engine: (approval→halted, approval→resumed, seconds per journal step; the
    halt's quiet wait under ``QUIET``)."""
    put_production_back(bw, production)
    engine = services.engine
    inc, _ = engine.request_rollback(model=MODEL, backup=target, reason="benchmark", requested_by="U0BENCH1")
    marks: dict[str, float] = {}

    def listener(event) -> None:
        if event.kind == "state" and event.incident.id == inc.id:
            marks.setdefault(event.incident.state, time.perf_counter())

    engine.subscribe(listener)
    try:
        t0 = time.perf_counter()
        engine.approve(incident_id=inc.id, approver="U0BENCH2")
        done = engine.execute(inc.id)
        end = time.perf_counter()
    finally:
        engine.listeners.remove(listener)
    if done.state != "monitoring":
        raise RuntimeError(f"the benchmark rollback ended {done.state}: {done.error}")
    journal = engine.steps(inc.id)
    steps = {s.step: (s.finished_at - s.started_at).total_seconds() for s in journal if s.finished_at}
    steps[QUIET] = float(next(s.detail.get("quiet_wait_seconds", 0.0) for s in journal if s.step == "verify_halt"))
    steps["verify_halt"] = max(steps.get("verify_halt", 0.0) - steps[QUIET], 0.0)
    return marks["halted"] - t0, marks.get("monitoring", end) - t0, steps


def time_floor(bw: BenchWorld, services, scratch: Path) -> dict[str, float]:
    """The least work of a rollback: two pair copies, one load + predict, one transaction."""
    from core.modelio import MODEL_FILES, atomic_copy, load_booster, predict
    from core.platform import feature_rows

    folder = bw.models_dir / MODEL
    features = list(bw.world.features)
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    for k in range(2):
        dest = scratch / f"copy{k}"
        dest.mkdir(exist_ok=True)
        for name in MODEL_FILES:
            atomic_copy(folder / name, dest / name)
    t1 = time.perf_counter()
    with services.db.transaction() as conn:
        _, _, rows = feature_rows(conn, features)
        conn.execute("UPDATE model_deployment_log SET is_production = is_production WHERE model_name = %s"
                     " AND is_production", (MODEL,))
    t2 = time.perf_counter()
    booster = load_booster(folder / "model.json")
    predict(booster, features, rows)
    t3 = time.perf_counter()
    out["copies"], out["transaction"], out["load_predict"] = t1 - t0, t2 - t1, t3 - t2
    out["floor"] = t3 - t0
    return out


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench rollback", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=11, help="timed runs (median reported), after one warm-up")
    parser.add_argument("--trees", type=int, default=2000)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    print(f"rollback benchmark: building the world and two {args.trees}-tree models ...", flush=True)
    with bench_world(seed=args.seed) as bw:
        production, target, train_s = add_model(bw, trees=args.trees, depth=args.depth, seed=args.seed)
        size = (bw.models_dir / MODEL / "model.json").stat().st_size
        print(f"  {MODEL}: model.json {size / 1e6:.1f} MB, {len(bw.world.features)} features, "
              f"trained in {train_s:.1f} s; rollback {production} -> {target}", flush=True)
        halted, resumed, floors = [], [], []
        steps: dict[str, list[float]] = {}
        scratch = bw.root / "floor"
        scratch.mkdir()
        with bw.services() as services:
            for i in range(args.runs + 1):  # the first run warms up imports, pool and page cache
                floor = time_floor(bw, services, scratch)
                h, r, s = time_rollback(bw, services, production, target)
                if i == 0:
                    continue
                floors.append(floor)
                halted.append(h)
                resumed.append(r)
                for k, v in s.items():
                    steps.setdefault(k, []).append(v)
    print(report(halted, resumed, floors, steps, runs=args.runs))
    return 0


def report(halted: list[float], resumed: list[float], floors: list[dict[str, float]],
           steps: dict[str, list[float]], *, runs: int) -> str:
    floor = median([f["floor"] for f in floors])
    quiet = median(steps.get(QUIET, [0.0]))
    h = median(halted)
    r = median([x - q for x, q in zip(resumed, steps.get(QUIET, [0.0] * len(resumed)))])  # less the quiet wait

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    rows = [
        ["approval -> halted", f"{h * 1000:.1f} ms", f"{h / floor:.2f}x",
         f"<= {HALTED_TARGET_SECONDS * 1000:.0f} ms", verdict(h <= HALTED_TARGET_SECONDS)],
        ["approval -> resumed, less the quiet wait", f"{r * 1000:.1f} ms", f"{r / floor:.2f}x",
         f"<= {ROLLBACK_TARGET_RATIO:.1f}x floor", verdict(r <= ROLLBACK_TARGET_RATIO * floor)],
        ["floor", f"{floor * 1000:.1f} ms", "1.00x", "", ""],
        ["  2 x copy model+metadata (fsync)", f"{median([f['copies'] for f in floors]) * 1000:.1f} ms", "", "", ""],
        ["  Booster load + predict", f"{median([f['load_predict'] for f in floors]) * 1000:.1f} ms", "", "", ""],
        ["  1 database transaction", f"{median([f['transaction'] for f in floors]) * 1000:.1f} ms", "", "", ""],
        ["halt quiet wait (HALT_QUIET_SECONDS)", f"{quiet * 1000:.1f} ms", "", "waiting, not work", ""],
    ]
    out = [f"\nrollback of {MODEL}, median of {runs} runs (after one warm-up)",
           table(rows, ["measure", "median", "ratio", "target", "result"])]
    known = sum(median(steps[s]) for s in STEPS if s in steps)
    step_rows = [[s, f"{median(steps[s]) * 1000:.1f} ms"] for s in STEPS if s in steps]
    step_rows.append(["(approval, transitions, events)", f"{max(r - known, 0.0) * 1000:.1f} ms"])
    out += ["\nwhere approval -> resumed goes (median per journal step)", table(step_rows, ["step", "median"])]
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(run())
