"""The demo's second scenario: a rollback that does NOT fix the problem.

``value_small`` is losing money too. Alice requests a rollback to its recommended backup and Carol approves it
after reading the evidence; the runbook runs. Then the market closes on a shock day (``bot.devtools.demo_scenarios``): the
day's returns run against what the old and the restored model predicted, so the cause is the market, not the
model. Five minutes after the resume the monitoring checks the restored model on that day, finds its IC far
below the threshold, and the incident needs attention instead of resolving. The escalation pages the primary
contact (Frank: a Slack DM and a PagerDuty trigger through the local PagerDuty stand-in); nobody acknowledges
within ESCALATION_ACK_MINUTES on the demo's clock, so the emergency contact (Grace) is paged too; then Frank
presses *Acknowledge* in his DM (PagerDuty gets the acknowledge), and Bob halts trading from the card while the
desk investigates. The incident stays open: it never resolves over a live problem.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import psycopg
from psycopg.rows import dict_row

from bot.devtools.demo_scenarios import ShockDay, shock_day
from bot.devtools.demo_stage import CHANNEL, Check, click, quiet, request_rollback, shows, wait_until
from core.services import Services

if TYPE_CHECKING:  # pragma: no cover
    from bot.devtools.demo import Environment
    from bot.devtools.pagerduty_standin import PagerDutyStandIn
    from bot.devtools.slack_standin import SlackStandIn

MODEL = "value_small"
PRIMARY, EMERGENCY = "U0FRANK", "U0GRACE"

__all__ = ["MODEL", "play"]


def play(env: Environment) -> list[Check]:
    """Play the scenario, then check what really happened."""
    incident_id, shock = _play(env)
    with psycopg.connect(env.url, row_factory=dict_row, autocommit=True) as conn:
        return _verify(conn, env.services, incident_id, shock, env.box.standin, env.pagerduty)


def _play(env: Environment) -> tuple[int, ShockDay]:
    box, n, clock = env.box, env.narrator, env.clock
    services = box.services
    engine = services.engine
    settings = services.settings

    n.narrate(f"{MODEL} is losing money as well. Frank is on call (PRIMARY_CONTACTS), Grace is the head of trading "
              f"(EMERGENCY_CONTACTS); PagerDuty is configured (PAGERDUTY_ROUTING_KEY, a local stand-in of its "
              f"Events API). A page waits {settings.escalation_ack_minutes:g} minutes for *Acknowledge* "
              "(ESCALATION_ACK_MINUTES) before the emergency contacts are paged.")
    target = services.backups(model=MODEL).recommendation.backup
    if target is None:
        raise RuntimeError(f"the demo world has no candidate backup for {MODEL}")
    reason = "Live IC negative for two weeks; P&L down"
    inc = request_rollback(box, n, MODEL, target.name, reason)

    n.person("U0CAROL", "reads the evidence and clicks [Approve] (and confirms)")
    click(box, "U0CAROL", "rollback_approve", box.standin.message(CHANNEL, inc.message_ts))
    wait_until(lambda: engine.get(inc.id).state in ("monitoring", "failed", "verified"), 120, "the rollback")
    box.settle()
    n.show_new()
    inc = engine.get(inc.id)
    if inc.state != "monitoring":
        raise RuntimeError(f"{inc.ref} ended {inc.state}, not monitoring: the scenario cannot go on")

    folder = settings.models_dir / MODEL
    with psycopg.connect(settings.database_dsn()) as conn:
        shock = shock_day(conn, env.world.market, against=[folder, folder / inc.emergency_backup])
    restored_ic, replaced_ic = shock.ics[folder.name], shock.ics[inc.emergency_backup]
    n.narrate(f"The market closes on {shock.day} with a shock: the index falls {-shock.market_move:.1%} and the "
              f"day's moves run against the old and the restored model alike (the demo makes them so: IC "
              f"{restored_ic:+.2f} for the restored {inc.target_backup}, {replaced_ic:+.2f} for the replaced "
              f"{inc.from_version}). The cause is the market; a rollback cannot fix it.")
    n.narrate(f"{settings.monitor_every_minutes:g} minutes after the resume, the monitoring looks at the restored "
              "model on the new day (the demo moves its clock forward)")
    quiet(services)
    clock.advance(settings.monitor_every_minutes)
    services.worker.run_due()
    wait_until(lambda: engine.get(inc.id).state == "needs_attention", 30, "the incident to need attention")
    wait_until(lambda: _page(services, inc.id) is not None, 30, "the page")
    wait_until(lambda: env.pagerduty.events("trigger"), 30, "PagerDuty's trigger")
    shows(box, box.standin.dm_channel(PRIMARY), "Escalation")
    shows(box, CHANNEL, "Paged at", ts=inc.message_ts)
    box.settle()
    n.show_new()
    trigger = env.pagerduty.events("trigger")[0]
    n.narrate(f"PagerDuty (the local stand-in) received: trigger, dedup key {trigger['dedup_key']}, severity "
              f"{trigger['payload']['severity']}: “{trigger['payload']['summary']}”")
    inc = engine.get(inc.id)
    n.card(inc.message_ts, f"{inc.ref} needs attention")

    n.narrate(f"{settings.escalation_ack_minutes:g} minutes pass and nobody presses Acknowledge (the demo moves "
              "its clock forward)")
    quiet(services)
    clock.advance(settings.escalation_ack_minutes)
    services.worker.run_due()
    wait_until(lambda: (_page(services, inc.id) or {}).get("emergency_paged_at") is not None, 30,
               "the emergency contacts' page")
    shows(box, box.standin.dm_channel(EMERGENCY), "Emergency escalation")
    box.settle()
    n.show_new()

    n.person(PRIMARY, "clicks [Acknowledge] in his DM")
    dm = box.standin.dm_channel(PRIMARY)
    page = next(m for m in box.standin.messages(dm) if "Escalation" in m.text)
    click(box, PRIMARY, "page_acknowledge", page, channel=dm)
    wait_until(lambda: (_page(services, inc.id) or {}).get("acknowledged_by") == PRIMARY, 30, "the acknowledgement")
    services.worker.run_due()
    wait_until(lambda: env.pagerduty.events("acknowledge"), 30, "PagerDuty's acknowledge")
    shows(box, CHANNEL, "acknowledged the page")
    shows(box, CHANNEL, "acknowledged by", ts=inc.message_ts)
    box.settle()
    n.show_new()
    n.narrate("PagerDuty (the local stand-in) received: acknowledge, the same dedup key; the alert is now "
              f"{env.pagerduty.alerts.get(trigger['dedup_key'])}")

    n.person("U0BOB", "clicks [Halt trading] on the card (and confirms): the desk investigates with trading stopped")
    click(box, "U0BOB", "attention_halt", box.standin.message(CHANNEL, inc.message_ts))
    wait_until(lambda: _trading_halted(services), 30, "the halt")
    shows(box, CHANNEL, "halted automated trading")
    box.settle()
    n.show_new()
    inc = engine.get(inc.id)
    n.card(inc.message_ts, f"{inc.ref}, acknowledged and still open")
    n.narrate(f"{inc.ref} stays open (needs attention) until a person closes it: another backup, or an approver "
              f"accepting it with a written reason. Its {settings.escalate_after_minutes:g}-minute escalation keeps "
              "running from the first report.")
    return inc.id, shock


def _page(services: Services, incident_id: int) -> dict | None:
    with services.db.transaction() as conn:
        return conn.execute("SELECT * FROM rollback_bot.pages WHERE incident_id = %s", (incident_id,)).fetchone()


def _trading_halted(services: Services) -> bool:
    with services.db.transaction() as conn:
        return bool(conn.execute("SELECT halted FROM rollback_bot.trading_state").fetchone()["halted"])


def _dms(standin: SlackStandIn, user: str, needle: str) -> list:
    return [m for m in standin.messages(standin.dm_channel(user)) if needle in m.text]


def _verify(conn: psycopg.Connection, services: Services, incident_id: int, shock: ShockDay, standin: SlackStandIn,
            pagerduty: PagerDutyStandIn) -> list[Check]:
    inc = services.engine.get(incident_id)
    steps = services.engine.steps(inc.id)
    names = [s.step for s in steps]
    attention = (inc.plan or {}).get("attention") or {}
    page = conn.execute("SELECT * FROM rollback_bot.pages WHERE incident_id = %s", (inc.id,)).fetchone() or {}
    events = [e for e in pagerduty.events() if e.get("dedup_key") == page.get("dedup_key")]
    folder = services.settings.models_dir / MODEL
    rows = conn.execute("SELECT version FROM model_deployment_log WHERE model_name = %s AND is_production",
                        (MODEL,)).fetchall()
    return [
        Check("the rollback itself ran: approved by Carol, verified, trading resumed on the backup",
              inc.approved_by == "U0CAROL" and "verify" in names and "resume" in names
              and [r["version"] for r in rows] == [inc.target_backup] and (folder / inc.emergency_backup).is_dir(),
              inc.target_backup or ""),
        Check("the approver saw the evidence before approving",
              ((inc.plan or {}).get("evidence") or {}).get("state") == "ready" and any(
                  s.step == "evidence" and s.finished_at <= inc.approved_at for s in steps),
              ((inc.plan or {}).get("evidence") or {}).get("verdict", "")),
        Check("diagnostics of the replaced model ran once, after the halt",
              names.count("diagnostics") == 1 and names.index("halt") < names.index("diagnostics")),
        Check("monitoring judged the restored model bad on the new day: the incident needs attention, never resolved",
              inc.state == "needs_attention" and inc.resolved_at is None and "needs_attention" in names
              and any("IC" in r for r in attention.get("reasons") or []),
              "; ".join(attention.get("reasons") or [])[:160]),
        Check("escalated: journaled and told in the thread", "escalate" in names and any(
            "does not resolve the issue" in m.text for m in standin.thread(CHANNEL, inc.message_ts))),
        Check("the primary contact was paged by DM; the emergency contact only after the acknowledgement window",
              len(_dms(standin, PRIMARY, "Escalation")) == 1 and len(_dms(standin, EMERGENCY, "Emergency")) == 1
              and page.get("emergency_paged_at") is not None and page.get("paged_at") is not None
              and (page["emergency_paged_at"] - page["paged_at"]).total_seconds()
              >= 60 * services.settings.escalation_ack_minutes),
        Check("PagerDuty received a trigger, then an acknowledge, with one dedup key for the incident",
              [e.get("event_action") for e in events] == ["trigger", "acknowledge"]
              and pagerduty.alerts.get(page.get("dedup_key")) == "acknowledged",
              page.get("dedup_key") or ""),
        Check("a person acknowledged the page: Frank, by pressing Acknowledge",
              page.get("acknowledged_by") == PRIMARY and "acknowledge" in names and conn.execute(
                  "SELECT count(*) AS n FROM rollback_bot.audit_log WHERE action = 'acknowledge' AND actor = %s"
                  " AND outcome = 'ok'", (PRIMARY,)).fetchone()["n"] == 1),
        Check("trading is halted while the incident stays open", _trading_halted(services) and inc.is_open),
        Check("the shock day ran against both models (the market, not the model)",
              all(ic < -0.3 for ic in shock.ics.values()),
              ", ".join(f"{k} IC {v:+.2f}" for k, v in shock.ics.items())),
    ]
