"""The watchdog (core/watchdog.py): proposes rollbacks for degraded or broken production models, never acts.

In the shared test world both production models were trained just before the generator's regime change and
fail after it (negative IC), while each model's oldest backup, trained in the momentum era, still works
(``ModelInfo.best_post_change``). The thresholds below sit between the two.
"""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta, timezone

import pytest

from core.watchdog import WATCHDOG_JOB, Proposal, Watchdog
from core.worker import Worker
from tests.helpers import assert_consistent, trading_halted

MODEL = "growth_momentum_large"
IC, SHARPE = 0.02, 1.0


@pytest.fixture
def watchdog(services) -> Watchdog:
    return Watchdog(services.engine, services.registry, ic_threshold=IC, sharpe_threshold=SHARPE, days=20, min_days=10)


def _count(conn, query: str, *params) -> int:
    return conn.execute(query, params).fetchone()["n"]


def _nothing_was_started(conn, world) -> None:
    assert _count(conn, "SELECT count(*) AS n FROM rollback_bot.incidents") == 0
    assert _count(conn, "SELECT count(*) AS n FROM rollback_bot.jobs WHERE kind <> %s", WATCHDOG_JOB) == 0
    assert not trading_halted(conn)
    for model, info in world.models.items():
        assert assert_consistent(conn, world.models_dir, model) == info.production_version


def _install(world, backup_of: dict[str, str]) -> None:
    """Put a backup's files in production (what a finished rollback leaves on disk)."""
    for model, backup in backup_of.items():
        for name in ("model.json", "metadata.json"):
            shutil.copyfile(world.models_dir / model / backup / name, world.models_dir / model / name)


def test_the_world_degrades_production_and_keeps_one_good_backup(world) -> None:
    """The premise of the thresholds: production fails after the change, the oldest backup does not."""
    for info in world.models.values():
        assert info.production.post_change.spearman_ic < IC and info.production.post_change.sharpe_ratio < SHARPE
        best = info.best_post_change.post_change
        assert best.spearman_ic > IC and best.sharpe_ratio > SHARPE


def test_a_degraded_model_is_proposed_with_a_target_and_nothing_is_started(watchdog, world, conn) -> None:
    seen: list[Proposal] = []
    sent = watchdog.run_once(seen.append)
    assert sent == seen and {p.model for p in sent} == set(world.models)
    p = next(p for p in sent if p.model == MODEL)
    info = world.models[MODEL]
    assert p.loads and p.production_version == info.production_version
    assert p.metrics.days == 20 and p.metrics.spearman_ic < IC and p.metrics.sharpe_ratio < SHARPE
    assert len(p.reasons) == 2 and "IC" in p.reasons[0] and "Sharpe" in p.reasons[1]
    assert p.recommended == info.best_post_change.name
    assert p.recommended_meets_thresholds and p.recommended_metrics.spearman_ic > IC
    assert p.window[1] < world.end_date
    by_name = {c.backup: c for c in p.candidates}
    assert by_name[info.production_version].usable is False  # identical to production
    assert p.reason_text.startswith(f"Watchdog: {MODEL}") and p.recommended in p.reason_text
    _nothing_was_started(conn, world)
    rows = conn.execute("SELECT actor, outcome, detail FROM rollback_bot.audit_log WHERE action = 'watchdog_proposal'"
                        " ORDER BY id").fetchall()
    assert [r["outcome"] for r in rows] == ["proposed", "proposed"]
    assert {r["detail"]["model"] for r in rows} == set(world.models)


def test_proposed_once_until_the_cooldown_has_passed(watchdog, services, world, conn) -> None:
    base = datetime.now(timezone.utc)
    services.engine.clock = lambda: base
    seen: list[Proposal] = []
    assert len(watchdog.run_once(seen.append)) == 2
    assert watchdog.run_once(seen.append) == []
    services.engine.clock = lambda: base + timedelta(hours=23)
    assert watchdog.run_once(seen.append) == []
    services.engine.clock = lambda: base + timedelta(hours=25)
    assert len(watchdog.run_once(seen.append)) == 2
    assert len(seen) == 4
    _nothing_was_started(conn, world)


def test_no_proposal_while_a_rollback_of_the_model_is_open(watchdog, services, world, conn) -> None:
    target = world.models[MODEL].best_post_change.name
    services.engine.request_rollback(model=MODEL, backup=target, reason="already on it", requested_by="U0ALICE")
    sent = watchdog.run_once(lambda p: None)
    assert [p.model for p in sent] == [m for m in world.models if m != MODEL]


def test_a_healthy_model_stays_quiet(watchdog, world, conn) -> None:
    _install(world, {m: info.best_post_change.name for m, info in world.models.items()})
    assert watchdog.evaluate_all(conn) == []
    assert watchdog.run_once(lambda p: pytest.fail(f"proposed {p}")) == []
    assert _count(conn, "SELECT count(*) AS n FROM rollback_bot.audit_log WHERE action = 'watchdog_proposal'") == 0


def test_thresholds_below_the_metrics_raise_nothing(services, world, conn) -> None:
    lenient = Watchdog(services.engine, services.registry, ic_threshold=-0.5, sharpe_threshold=-50.0, days=20,
                       min_days=10)
    assert lenient.evaluate_all(conn) == []


def test_a_corrupt_model_file_is_proposed_for_restore(watchdog, world, conn) -> None:
    path = world.models_dir / MODEL / "model.json"
    path.write_bytes(path.read_bytes()[:1000])
    seen: list[Proposal] = []
    watchdog.run_once(seen.append)
    p = next(p for p in seen if p.model == MODEL)
    assert not p.loads and p.metrics is None
    assert len(p.reasons) == 1 and "does not load" in p.reasons[0]
    assert p.recommended == world.models[MODEL].production_version  # the same version, uncorrupted
    assert _count(conn, "SELECT count(*) AS n FROM rollback_bot.incidents") == 0


def test_a_failed_delivery_is_tried_again(watchdog, world, conn) -> None:
    def broken(p: Proposal) -> None:
        raise RuntimeError("Slack is down")

    assert watchdog.run_once(broken) == []
    outcomes = [r["outcome"] for r in conn.execute(
        "SELECT outcome FROM rollback_bot.audit_log WHERE action = 'watchdog_proposal'")]
    assert outcomes == ["failed", "failed"]
    assert len(watchdog.run_once(lambda p: None)) == 2


def test_too_few_days_to_judge(watchdog, world, conn) -> None:
    early = world.trading_days[world.trading_days.index(world.first_feature_day) + 5]
    assert watchdog.evaluate_all(conn, as_of=early) == []
    before_change = world.trading_days[world.trading_days.index(world.regime_change_start) - 1]
    assert watchdog.evaluate_all(conn, as_of=before_change) == []  # healthy before the change


def test_scheduled_job_runs_once_per_slot_across_processes(watchdog, services, world, conn) -> None:
    now = {"t": datetime(2030, 1, 7, 10, 17, tzinfo=timezone.utc)}
    services.engine.clock = lambda: now["t"]
    seen: list[Proposal] = []
    first, second = services.worker, Worker(services.engine)  # two bot processes sharing one database
    watchdog.register(first, every_minutes=60, on_proposal=seen.append)
    Watchdog(services.engine, services.registry, ic_threshold=IC, sharpe_threshold=SHARPE, days=20,
             min_days=10).register(second, every_minutes=60, on_proposal=seen.append)
    jobs = conn.execute("SELECT run_at, dedupe_key FROM rollback_bot.jobs WHERE kind = %s", (WATCHDOG_JOB,)).fetchall()
    assert [j["run_at"] for j in jobs] == [datetime(2030, 1, 7, 10, 0, tzinfo=timezone.utc)]
    assert first.run_due() + second.run_due() == 1
    assert {p.model for p in seen} == set(world.models)
    pending = conn.execute("SELECT run_at FROM rollback_bot.jobs WHERE kind = %s AND done_at IS NULL",
                           (WATCHDOG_JOB,)).fetchall()
    assert [j["run_at"] for j in pending] == [datetime(2030, 1, 7, 11, 0, tzinfo=timezone.utc)]
    assert first.run_due() + second.run_due() == 0  # the next slot is not due yet
    now["t"] += timedelta(hours=1)
    assert second.run_due() + first.run_due() == 1
    assert len(seen) == 2  # within the cooldown: evaluated, not proposed again
    _nothing_was_started(conn, world)
