"""Render and save an incident's report from the database (``Reports``), and the "Add root cause" action."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from core import repository as repo
from core.engine import Engine
from core.errors import UnknownIncident
from core.followups import for_incident as followups_of, prevention_measures
from core.incidents import Incident, audit, journal
from core.report.files import ReportError, destination, find_report, write_chart, write_report
from core.report.render import render_report

__all__ = ["Reports", "add_root_cause"]


def add_root_cause(conn: psycopg.Connection, *, incident_id: int, text: str, by: str, at: datetime) -> None:
    """The "Add root cause" modal: append a person's text to the incident's root cause, journaled and audited."""
    text = (text or "").strip()
    if not text:
        raise ReportError("The root cause text is empty.")
    if not repo.append_root_cause(conn, incident_id, text[:8000], at=at):
        raise UnknownIncident(f"There is no incident INC-{incident_id}.")
    journal(conn, incident_id=incident_id, step="root_cause", actor=by, at=at, detail={"chars": len(text)})
    audit(conn, at=at, actor=by, action="root_cause", outcome="ok", incident_id=incident_id, chars=len(text))


class Reports:
    """Render and save an incident's report from the database, for the Slack layer, the mailer and the CLI.

    ``diagnostics`` returns the diagnostics summary of an incident (or None); ``chart`` returns PNG bytes
    of its performance chart (or None). Both are optional and any failure in them is left out of the report
    rather than stopping it.
    """

    def __init__(self, engine: Engine, incidents_dir: Path, *,
                 diagnostics: Callable[[Incident], str | None] | None = None,
                 chart: Callable[[Incident], bytes | None] | None = None,
                 people: Callable[[str], str] | None = None,
                 losses: Callable[[int], Sequence[Any]] | None = None) -> None:
        self.engine = engine
        self.losses = losses
        self.people = people
        self.incidents_dir = Path(incidents_dir)
        self.diagnostics = diagnostics
        self.chart = chart

    def render(self, incident_id: int, *, chart_file: str | None = None) -> tuple[Incident, str]:
        incident = self.engine.get(incident_id)
        steps = self.engine.steps(incident_id)
        summary = None
        if self.diagnostics is not None:
            try:
                summary = self.diagnostics(incident)
            except Exception:  # noqa: BLE001 - the report is written without it
                summary = None
        with self.engine.db.transaction() as conn:
            items, measures = followups_of(conn, incident_id), prevention_measures(conn, incident_id)
        markdown = render_report(incident=incident, steps=steps, diagnostics_summary=summary,
                                 now=self.engine.clock(), chart_file=chart_file, people=self.people,
                                 followups=items, prevention=measures,
                                 losses=self.losses(incident_id) if self.losses is not None else None)
        return incident, markdown

    def update(self, incident_id: int, *, actor: str = "rollback-bot") -> Path:
        """(Re)write the report file and, the first time, journal the ``report`` step. Returns the file."""
        incident = self.engine.get(incident_id)
        chart_name = None
        png = None
        if self.chart is not None:
            try:
                png = self.chart(incident)
            except Exception:  # noqa: BLE001 - a chart is a nice-to-have
                png = None
        if png:
            self.incidents_dir.mkdir(parents=True, exist_ok=True)
            chart_name = destination(self.incidents_dir, incident).with_suffix(".png").name
        incident, markdown = self.render(incident_id, chart_file=chart_name)
        path = write_report(incidents_dir=self.incidents_dir, incident=incident, markdown=markdown)
        if png:
            write_chart(report_path=path, png=png)
        with self.engine.db.transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('rollback_bot.report:' || %s))", (str(incident_id),))
            if not repo.report_written(conn, incident_id):
                journal(conn, incident_id=incident_id, step="report", actor=actor, at=self.engine.clock(),
                        detail={"file": path.name})
        return path

    def path(self, incident_id: int) -> Path | None:
        return find_report(self.incidents_dir, self.engine.get(incident_id))
