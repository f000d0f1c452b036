"""The runbook's timeline has one source (core.timeline): the card, the report and escalation show the same
milestones, with the same labels and the same times."""

from __future__ import annotations

import re

from core.escalation import check_target
from core.halt_now import halt_before_approval
from core.report import render_report
from core.timeline import MILESTONES, TARGETS, milestone_times, milestones, target_label, target_status
from handlers.incident_views import checklist_text
from tests.core.test_report import clock  # noqa: F401 - the engine's controllable clock (a fixture)

MODEL = "growth_momentum_large"


def halted_early_then_rolled_back(services, clock):
    """Halt now one minute after the request, approval at T+6: the halt target is met by the early halt,
    although the executor's own halt step (joining it) comes after T+2; the rollback is recorded late (T+5)."""
    target = services.registry.recommend(MODEL).backup.name
    inc, _ = services.engine.request_rollback(model=MODEL, backup=target, reason="IC collapsed",
                                              requested_by="U0ALICE")
    clock.advance(minutes=1)
    halt_before_approval(services.engine, incident_id=inc.id, user="U0CAROL", allowed=True)
    clock.advance(minutes=5)
    services.engine.approve(incident_id=inc.id, approver="U0BOB")
    return services.engine.execute(inc.id)


def report_timeline(md: str) -> dict[str, tuple[str, str]]:
    """The report's "Timeline against the runbook targets": label -> (target, status)."""
    section = md.split("## Timeline against the runbook targets\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| T+")]
    out = {}
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        out[cells[1]] = (cells[0], cells[5])
    return out


def card_lines(text: str) -> dict[str, str]:
    """The card's checklist: label -> the rest of its line."""
    out = {}
    for line in text.splitlines():
        tick, rest = line.split(" ", 1)
        label, _, tail = rest.partition(" — ")
        out[re.sub(r" \((missed )?target T\+\w+\)$", "", label)] = rest
    return out


def test_card_report_and_escalation_share_the_runbook_timeline(services, world, clock):
    inc = halted_early_then_rolled_back(services, clock)
    assert inc.state == "monitoring"
    steps = services.engine.steps(inc.id)
    assert [s.step for s in steps].count("halt") == 2, "the early halt and the executor's own"
    now = clock.advance(minutes=1)

    md = render_report(incident=inc, steps=steps, diagnostics_summary=None, now=now)
    in_report = report_timeline(md)
    on_card = card_lines(checklist_text(inc, steps))

    # every milestone with a target: the same label in the report's table and on the card
    assert list(in_report) == [m.label for m in TARGETS]
    for m in TARGETS:
        assert in_report[m.label][0] == target_label(m.target)
        assert m.label in on_card, (m.label, list(on_card))
    # and every milestone is on the card, in the timeline's order
    assert list(on_card) == [m.label for m in MILESTONES]

    # the same times: the halt target is met in the report and not missed on the card
    assert in_report["Automated trading halted"][1] == "met"
    assert "missed" not in on_card["Automated trading halted"]
    assert "T+1m00s" in on_card["Automated trading halted"]
    reached = milestone_times(inc, steps)
    card = {m.key: m for m in milestones(inc, steps)}
    for t in target_status(inc, steps, now):
        assert card[t.name].label == t.label
        assert card[t.name].done_at == reached[t.name] == t.reached_at

    # escalation names the target as the card and the report do
    late = services.engine.get(inc.id)
    breach = check_target(late, steps, "rolled_back", now)
    assert breach is not None and breach.label == "Rollback recorded in model_deployment_log"
    assert breach.label in on_card and breach.label in in_report
    assert "missed target" in on_card[breach.label] and in_report[breach.label][1] == "missed"
    assert check_target(late, steps, "halted", now) is None
