"""An incident's diagnostics (core/diagnostics/incident.py, version.py): they are about the version that was in
production when the incident opened, whenever the job runs (before, during or after the swap), and the restored
model's own live figures are kept apart for the monitoring."""

from __future__ import annotations

import json
from datetime import date

import pytest

from core.diagnostics.incident import diagnose_incident
from core.report import render_report
from bot.compose import build_services
from core.services import Services
from tests.helpers import files_equal

MODEL = "growth_momentum_large"


def metadata_ic(folder) -> float:
    return json.loads((folder / "metadata.json").read_text())["performance"]["spearman_ic"]


def diagnose(services: Services, inc, reread=None):
    return diagnose_incident(services.db, services.registry, inc, reread or (lambda: services.engine.get(inc.id)),
                             days=30, training_log=None, api_log=None, today=date.today())


def request(services: Services):
    target = services.registry.recommend(MODEL).backup.name
    inc, _ = services.engine.request_rollback(model=MODEL, backup=target, reason="IC collapsed", requested_by="U0ALICE")
    services.engine.approve(incident_id=inc.id, approver="U0BOB")
    return inc


# The job may run at any point of the rollback: run it there, from the engine's fault hook.
POINTS = {
    "halted, before the emergency backup": "after:halting",
    "backing up: the emergency backup named, not yet taken": "after:halted",
    "mid-restore: the new metadata.json in place, the old model.json still there": "restored:metadata.json",
    "restored, before verification": "after:restoring",
}


@pytest.mark.parametrize("point", list(POINTS))
def test_the_failed_version_is_diagnosed_whenever_the_job_runs(settings, db, world, point):
    failed_ic = metadata_ic(world.models_dir / MODEL)
    seen: dict = {}
    services: Services

    def hook(label: str) -> None:
        if label == POINTS[point] and "detail" not in seen:
            inc = services.engine.get(seen["id"])
            seen["state"] = inc.state
            seen["report"], seen["detail"] = diagnose(services, inc)

    services = build_services(settings, db, fault_hook=hook)
    inc = request(services)
    seen["id"] = inc.id
    done = services.engine.execute(inc.id)
    assert done.state == "monitoring", done.error
    detail = seen["detail"]
    target_ic = metadata_ic(world.models_dir / MODEL / done.target_backup)
    assert failed_ic != pytest.approx(target_ic, abs=5e-4)
    report = seen["report"]
    assert detail["version"] == done.from_version == report.version
    assert report.performance.expected_ic == pytest.approx(failed_ic)
    assert f"IC {failed_ic:.3f}" in report.summary().splitlines()[1]
    assert f"IC {target_ic:.3f}" not in detail["summary"]
    assert f"when {done.ref} opened" in detail["version_note"] and f"version {done.from_version}" in detail["summary"]
    # where the files were read: production before any change, the emergency backup once it exists
    if seen["state"] in ("halted", "backing_up"):
        assert detail["version_folder"] == MODEL and "read before the swap" in detail["version_note"]
    else:
        assert detail["version_folder"] == done.emergency_backup and "emergency backup" in detail["version_note"]
    # the restored model's own figures, apart
    restored = detail["restored"]
    assert restored["version"] == done.target_backup and restored["expected_ic"] == pytest.approx(target_ic)
    assert f"Restored model {done.target_backup}" in restored["line"] and f"IC {target_ic:.3f}" in restored["line"]


def test_files_read_while_the_swap_begins_are_replaced_by_the_emergency_backup(services, world):
    """The production files are read, then the incident looked at again: if the emergency backup exists by then,
    the swap may have begun during the read, so the emergency backup is read instead."""
    inc = request(services)
    halted = services.engine.get(inc.id)
    assert halted.emergency_backup is None

    def swap_during_the_read():
        return services.engine.execute(inc.id)  # the whole swap happens between the read and the look

    report, detail = diagnose(services, halted, reread=swap_during_the_read)
    done = services.engine.get(inc.id)
    assert done.state == "monitoring" and files_equal(world.models_dir / MODEL, world.models_dir / MODEL / done.target_backup)
    assert detail["version_folder"] == done.emergency_backup
    assert report.performance.expected_ic == pytest.approx(metadata_ic(world.models_dir / MODEL / done.emergency_backup))


def test_the_incident_job_after_the_swap_reports_the_failed_version_and_keeps_the_restored_figures(services, world):
    failed_ic = metadata_ic(world.models_dir / MODEL)
    inc = request(services)
    done = services.engine.execute(inc.id)  # the halt queued the diagnose job; it runs after the swap
    assert done.state == "monitoring"
    services.worker.run_due()
    inc = services.engine.get(inc.id)
    diag = inc.plan["diagnostics"]
    target_ic = metadata_ic(world.models_dir / MODEL / inc.target_backup)
    assert diag["version"] == inc.from_version and diag["version_folder"] == inc.emergency_backup
    assert f"IC {failed_ic:.3f}" in diag["summary"] and f"IC {target_ic:.3f}" not in diag["summary"]
    assert f"Restored model {inc.target_backup}" in diag["markdown"]
    step = next(s for s in services.engine.steps(inc.id) if s.step == "diagnostics")
    assert step.detail["version"] == inc.from_version
    # the report: root cause about the failed version; the restored model's figures under monitoring
    md = render_report(incident=inc, steps=services.engine.steps(inc.id), diagnostics_summary=None,
                       now=services.engine.clock())
    root = md.split("## Root cause", 1)[1].split("\n## ", 1)[0]
    monitoring = md.split("## Monitoring after the resume", 1)[1].split("\n## ", 1)[0]
    assert f"version {inc.from_version}" in root and f"IC {failed_ic:.3f}" in root
    assert f"IC {target_ic:.3f}" not in root
    assert f"Restored model {inc.target_backup}" in monitoring and f"IC {target_ic:.3f}" in monitoring
