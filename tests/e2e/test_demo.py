"""Issue 7: `rollback-bot demo` plays a whole incident and checks its end state."""

from __future__ import annotations

import io

import psycopg

from bot.devtools import demo


def test_demo_plays_a_whole_incident(database_url, tmp_path):
    # its own database inside the test cluster, so the shared test database is untouched
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS demo_under_test WITH (FORCE)")
        conn.execute("CREATE DATABASE demo_under_test")
    url = database_url.rsplit("/", 1)[0] + "/demo_under_test"
    out = io.StringIO()
    code = demo.run(root=tmp_path / "demo", database_url=url, out=out, size="test")
    text = out.getvalue()
    assert code == 0, text
    for needle in ("/rollback status", "Recommended target", "[Approve] [Halt now] [Deny]", "You cannot approve your own request",
                   "Automated trading halted", "Emergency backup", "Trading resumed", "Incident resolved",
                   "every client is back on its own settings"):
        assert needle in text, needle
    assert "✘" not in text.split("What really happened")[1]
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS demo_under_test WITH (FORCE)")
