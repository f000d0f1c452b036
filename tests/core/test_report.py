"""Issue 5: the incident report, rendered from the incident and its journal, and its files."""

from __future__ import annotations

import dataclasses
import os
from datetime import timedelta, timezone

import pytest
from psycopg.types.json import Jsonb

from core import incidents
from core.incidents import journal
from core.report import (
    ReportError,
    Reports,
    add_root_cause,
    checklist,
    find_report,
    render_report,
    summary_line,
    target_status,
    write_chart,
    write_report,
)
from tests.helpers import Clock, corrupt_after_restore

MODEL = "growth_momentum_large"


@pytest.fixture
def clock(services):
    c = Clock(incidents.utcnow().replace(microsecond=0))
    services.engine.clock = c
    return c


def rollback(services, clock, *, approve_after=1, **kw):
    target = services.registry.recommend(MODEL).backup.name
    inc, _ = services.engine.request_rollback(model=MODEL, backup=target, reason=kw.pop("reason", "Sharpe collapsed"),
                                              requested_by="U0ALICE", **kw)
    clock.advance(minutes=approve_after)
    services.engine.approve(incident_id=inc.id, approver="U0BOB")
    return services.engine.execute(inc.id)


def render(services, inc_id, now, **kw):
    inc = services.engine.get(inc_id)
    return render_report(incident=inc, steps=services.engine.steps(inc_id), diagnostics_summary=kw.pop("diag", None),
                         now=now, **kw)


def section(md: str, title: str) -> str:
    start = md.index(f"## {title}\n")
    end = md.find("\n## ", start + 1)
    return md[start:end if end > 0 else None]


def test_report_of_a_successful_rollback_is_derived_from_the_journal(services, world, conn, clock):
    inc = rollback(services, clock, estimated_loss=250000, severity="critical")
    assert inc.state == "monitoring"
    active = conn.execute("SELECT count(*) AS n FROM clients WHERE active").fetchone()["n"]
    md = render(services, inc.id, clock.advance(minutes=1), diag="- ml_training_features: 2 days with NULLs")

    assert md.startswith(f"# Incident report INC-{inc.id}: rollback of {MODEL}")
    assert "| Severity | critical |" in md and "| Reason | Sharpe collapsed |" in md
    assert f"{inc.from_version} → {inc.target_backup}" in md and inc.emergency_backup in md
    assert "U0ALICE" in md and "| Approved by | U0BOB at" in md

    impact = section(md, "Impact")
    assert f"Portfolios halted: {active} active client(s)" in impact
    assert "ongoing (2 min 00 s so far)" in impact
    assert "Estimated loss: 250,000" in impact
    assert "automated trading halted from" in impact and "(0 s)." in impact

    root = section(md, "Root cause")
    assert "2 days with NULLs" in root and "Not recorded yet." in root

    actions = section(md, "Actions")
    rows = [line for line in actions.splitlines() if line.startswith("| 2")]
    steps = services.engine.steps(inc.id)
    assert len(rows) == len(steps)
    assert "| Rollback requested | U0ALICE | ok |" in rows[0] and "| Approved | U0BOB | ok |" in rows[1]
    assert any("Trading halted" in r and f"{active} active client(s)" in r for r in rows)
    assert any("Deployment log updated" in r and inc.target_backup in r for r in rows)

    timeline = section(md, "Timeline against the runbook targets")
    assert timeline.count("| met |") == 4 and "T+1 min 00 s" in timeline

    items = checklist(services.engine.get(inc.id), steps)
    assert [i.done for i in items] == [True] * 6 + [False] * 4
    box = section(md, "Runbook checklist")
    assert "- [x] 6. Trading resumed" in box and "- [ ] 7. Logs monitored" in box
    assert "- [ ] 8. Incident report written and stakeholders notified (report not yet written;" in box
    assert "- [ ] 9. Root-cause analysis initiated (no root cause recorded" in box
    assert "- [ ] 10. Prevention measures identified (none written" in box

    nxt = section(md, "Prevention and next steps")
    assert f"Keep {inc.from_version} out of production" in nxt
    assert "Record the root cause" in nxt and "Confirm the estimated loss of 250,000" in nxt
    assert "did not honour the halt" not in nxt and "targets missed" not in nxt


def test_root_cause_is_added_and_the_end_is_reported(services, world, conn, clock):
    inc = rollback(services, clock)
    with services.db.transaction() as c:
        add_root_cause(c, incident_id=inc.id, text="Regime change: momentum returned.", by="U0CAROL", at=clock())
        add_root_cause(c, incident_id=inc.id, text="Retrain weekly.", by="U0BOB", at=clock())
    with pytest.raises(ReportError):
        with services.db.transaction() as c:
            add_root_cause(c, incident_id=inc.id, text="  ", by="U0BOB", at=clock())
    with services.db.transaction() as c:  # what the diagnostics job stores
        c.execute("UPDATE rollback_bot.incidents SET plan = plan || %s WHERE id = %s",
                  (Jsonb({"diagnostics": {"summary": "IC fell after the regime change."}}), inc.id))
    clock.advance(minutes=39)
    services.engine.resolve(incident_id=inc.id)
    md = render(services, inc.id, clock.advance(minutes=5))
    root = section(md, "Root cause")
    assert "Regime change: momentum returned.\n\nRetrain weekly." in root
    assert "### Diagnostics\n\nIC fell after the regime change." in root
    assert "Root cause added | U0CAROL" in md
    assert "(40 min 00 s)" in section(md, "Impact")
    assert "Record the root cause" not in md
    assert "| State | resolved |" in md
    assert "closed after 40 min 00 s; checklist 7/10 done" in summary_line(services.engine.get(inc.id),
                                                                          services.engine.steps(inc.id))
    assert "- [x] 9. Root-cause analysis initiated (root cause recorded)" in md


def test_a_slow_approval_misses_the_halt_target(services, world, clock):
    inc = rollback(services, clock, approve_after=3)
    steps = services.engine.steps(inc.id)
    status = {t.name: t.status for t in target_status(inc, steps, clock())}
    assert status == {"halted": "missed", "rolled_back": "met", "verified": "met", "resumed": "met",
                      "stable": "pending", "root_cause": "pending", "watched": "pending"}
    md = render(services, inc.id, clock())
    assert "Runbook targets missed: automated trading halted (T+2)" in md and "the approval alone took 3 min 00 s" in md


def test_open_targets_are_pending_then_overdue(services, world, clock):
    target = services.registry.recommend(MODEL).backup.name
    inc, _ = services.engine.request_rollback(model=MODEL, backup=target, reason="r", requested_by="U0ALICE")
    early = {t.name: t.status for t in target_status(inc, [], clock.now + timedelta(minutes=1))}
    late = {t.name: t.status for t in target_status(inc, [], clock.now + timedelta(minutes=6))}
    assert early == dict.fromkeys(early, "pending")
    assert late == {"halted": "overdue", "rolled_back": "overdue", "verified": "pending", "resumed": "pending",
                    "stable": "pending", "root_cause": "pending", "watched": "pending"}
    closed = dataclasses.replace(inc, state="denied")
    assert {t.status for t in target_status(closed, [], clock.now + timedelta(minutes=20))} == {"not reached"}


def test_failed_verification_report(settings, db, world, conn):
    from bot.compose import build_services

    services = build_services(settings, db, fault_hook=corrupt_after_restore(world.models_dir / MODEL))
    target = services.registry.recommend(MODEL).backup.name
    inc, _ = services.engine.request_rollback(model=MODEL, backup=target, reason="r", requested_by="U0ALICE")
    services.engine.approve(incident_id=inc.id, approver="U0BOB")
    done = services.engine.execute(inc.id)
    assert done.state == "failed"
    steps = services.engine.steps(inc.id)
    items = checklist(done, steps)
    assert [i.done for i in items[:4]] == [True] * 4
    assert not items[4].done and items[4].note == "verification failed" and not items[5].done
    md = render(services, inc.id, incidents.utcnow())
    nxt = section(md, "Prevention and next steps")
    assert f"Investigate backup {target}: it failed verification" in nxt
    assert "Trading stays halted" in nxt and "out of production" not in nxt
    assert "Original model put back" in section(md, "Actions")
    assert "| not reached |" in section(md, "Timeline against the runbook targets")
    assert "Not run" in section(md, "Monitoring after the resume")


def test_trades_after_the_halt_are_called_out(services, world, conn, clock):
    def rogue_trade(label):
        if label == "after:halting":
            conn.execute("INSERT INTO trades (client_id, ticker, side, quantity, price, executed_at)"
                         " VALUES ('c1', 'AAA', 'buy', 1, 1, clock_timestamp() + interval '1 second')")

    services.engine.fault = rogue_trade
    inc = rollback(services, clock)
    md = render(services, inc.id, clock())
    assert "- [ ] 2. Trading halted, no trade after the halt (1 trade(s) executed after the halt)" in md
    assert "The platform did not honour the halt: 1 trade(s)" in md


def test_checklist_item_8_needs_the_report_and_a_notification(services, world, clock):
    inc = rollback(services, clock)
    with services.db.transaction() as c:
        journal(c, incident_id=inc.id, step="report", actor="rollback-bot", at=clock(), detail={"file": "x.md"})
    assert not checklist(inc, services.engine.steps(inc.id))[7].done
    with services.db.transaction() as c:
        journal(c, incident_id=inc.id, step="notify", actor="rollback-bot", at=clock(), outcome="failed",
                detail={"channel": "email", "milestone": "opened"}, error="smtp down")
    item = checklist(inc, services.engine.steps(inc.id))[7]
    assert not item.done and "1 notification(s) failed" in item.note and item.key == "reported"
    with services.db.transaction() as c:
        journal(c, incident_id=inc.id, step="notify", actor="rollback-bot", at=clock(),
                detail={"channel": "slack", "milestone": "opened"})
    assert checklist(inc, services.engine.steps(inc.id))[7].done


def test_manual_halt_report(services, world, clock):
    inc = services.engine.halt_trading(user="U0ALICE", reason="suspicious fills")
    md = render(services, inc.id, clock.advance(minutes=3))
    assert md.startswith(f"# Incident report INC-{inc.id}: halt of automated trading")
    assert "- [x] 2. Trading halted" in md
    assert "- [ ] 3. Emergency backup of the current model taken (not applicable)" in md
    assert "- [ ] 9. Root-cause analysis initiated" in md and "## Prevention\n" in md
    assert "still halted" in section(md, "Impact")
    assert section(md, "Timeline against the runbook targets").count("not applicable") == 6  # only T+2 applies


# ------------------------------------------------------------------------------------------------- files


def test_report_files_never_overwrite_another_incident(services, world, tmp_path, clock):
    inc = rollback(services, clock)
    folder = tmp_path / "incidents"
    first = write_report(incidents_dir=folder, incident=inc, markdown="# first\n")
    assert first.name == f"INC-{inc.id}-{MODEL}-{inc.created_at:%Y%m%d}.md"
    again = write_report(incidents_dir=folder, incident=inc, markdown="# second\n")
    assert again == first and first.read_text().endswith("# second\n")
    assert sorted(p.name for p in folder.iterdir()) == [first.name], "no temporary files left behind"

    # Same number, another incident (the database was rebuilt): a new file, the old one untouched.
    other = dataclasses.replace(inc, created_at=inc.created_at + timedelta(hours=1), reason="other")
    second = write_report(incidents_dir=folder, incident=other, markdown="# other\n")
    assert second != first and second.name.endswith("-2.md")
    assert first.read_text().endswith("# second\n") and second.read_text().endswith("# other\n")
    assert find_report(folder, inc) == first and find_report(folder, other) == second

    # The same instant seen through a connection in another time zone is the same incident, the same file.
    shifted = dataclasses.replace(inc, created_at=inc.created_at.astimezone(timezone(timedelta(hours=-11))))
    assert write_report(incidents_dir=folder, incident=shifted, markdown="# second\n") == first

    chart = write_chart(report_path=first, png=b"\x89PNG...")
    assert chart.name == first.name.replace(".md", ".png")


def test_report_files_keep_the_rights_of_the_file_they_replace(services, world, tmp_path, clock):
    """Written like model files (core.atomicfile): a new report takes its folder's rights less execute, a
    rewritten one keeps the rights someone gave it; never the temporary's 0600."""
    inc = rollback(services, clock)
    folder = tmp_path / "incidents"
    folder.mkdir()
    os.chmod(folder, 0o750)
    path = write_report(incidents_dir=folder, incident=inc, markdown="# first\n")
    assert path.stat().st_mode & 0o7777 == 0o640
    os.chmod(path, 0o604)
    write_report(incidents_dir=folder, incident=inc, markdown="# second\n")
    assert path.stat().st_mode & 0o7777 == 0o604 and path.read_text().endswith("# second\n")
    chart = write_chart(report_path=path, png=b"\x89PNG...")
    assert chart.stat().st_mode & 0o7777 == 0o640
    assert sorted(p.name for p in folder.iterdir()) == sorted([path.name, chart.name]), "no temporaries left"


def test_a_symlink_at_the_destination_is_refused(services, world, tmp_path, clock):
    inc = rollback(services, clock)
    folder = tmp_path / "incidents"
    folder.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    link = folder / f"INC-{inc.id}-{MODEL}-{inc.created_at:%Y%m%d}.md"
    os.symlink(victim, link)
    with pytest.raises(ReportError, match="symbolic link"):
        write_report(incidents_dir=folder, incident=inc, markdown="# x\n")
    assert victim.read_text() == "keep me" and link.is_symlink()
    assert find_report(folder, inc) is None


def test_reports_update_writes_the_file_and_journals_it_once(services, world, settings, clock):
    inc = rollback(services, clock)
    reports = Reports(services.engine, settings.incidents_dir, diagnostics=lambda i: f"diagnosed {i.ref}",
                      chart=lambda i: b"\x89PNG\r\n\x1a\nfake")
    path = reports.update(inc.id)
    text = path.read_text()
    assert f"diagnosed INC-{inc.id}" in text and f"]({path.with_suffix('.png').name})" in text
    assert path.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
    clock.advance(minutes=1)
    assert reports.update(inc.id) == path
    assert [s.step for s in services.engine.steps(inc.id)].count("report") == 1
    assert "Incident report written" in path.read_text(), "the second version lists the first write"
    assert reports.path(inc.id) == path
