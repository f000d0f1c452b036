"""core.pagerduty: python-pagerduty's Events API v2 client against a local HTTP stand-in of PagerDuty (no mocks):
trigger / acknowledge / resolve with a dedup key, retries on 429 and 5xx (bounded), no retry on a bad event;
and the settings that configure it."""

from __future__ import annotations

import time

import pytest

from bot.observability import secret_values
from bot.devtools.pagerduty_standin import PagerDutyStandIn
from core.errors import ConfigError
from core.pagerduty import RATE_LIMIT_RETRIES, PagerDuty, PagerDutyFailed
from core.settings import load_settings

KEY = "R" * 32


@pytest.fixture
def pd():
    with PagerDutyStandIn(routing_key=KEY) as standin:
        yield standin


def client(pd, key=KEY) -> PagerDuty:
    return PagerDuty(key, pd.url, backoff_seconds=0.01)


def test_trigger_acknowledge_resolve_one_alert(pd):
    c = client(pd)
    assert c.trigger("rollback-bot/INC-1/x", summary="INC-1 is still open", source="rollback-bot",
                     severity="high", details={"incident": "INC-1"}) == "rollback-bot/INC-1/x"
    assert pd.alerts == {"rollback-bot/INC-1/x": "triggered"}
    c.acknowledge("rollback-bot/INC-1/x")
    assert pd.alerts["rollback-bot/INC-1/x"] == "acknowledged"
    c.resolve("rollback-bot/INC-1/x")
    assert pd.alerts["rollback-bot/INC-1/x"] == "resolved"
    trigger = pd.events("trigger")[0]
    assert trigger["routing_key"] == KEY and trigger["dedup_key"] == "rollback-bot/INC-1/x"
    assert trigger["payload"] == {"summary": "INC-1 is still open", "source": "rollback-bot", "severity": "error",
                                  "custom_details": {"incident": "INC-1"}}
    assert KEY not in repr(c)


def test_429_and_5xx_are_retried_then_accepted(pd):
    pd.fail_next(429, times=2, retry_after=1)
    pd.fail_next(500)
    pd.fail_next(503)
    started = time.monotonic()
    client(pd).trigger("k1", summary="s", source="rollback-bot")
    assert [r.status for r in pd.received()] == [429, 429, 500, 503, 202]
    assert pd.alerts == {"k1": "triggered"}
    assert time.monotonic() - started < 5


def test_a_rate_limit_that_never_ends_is_given_up_on(pd):
    pd.fail_next(429, times=50)
    with pytest.raises(PagerDutyFailed, match="HTTP 429"):
        client(pd).acknowledge("k1")
    assert len(pd.received()) == RATE_LIMIT_RETRIES + 1  # the library alone would retry for ever


def test_a_bad_event_is_not_retried(pd):
    with pytest.raises(PagerDutyFailed, match="HTTP 400"):
        client(pd, key="W" * 32).trigger("k1", summary="s", source="rollback-bot")
    assert [r.status for r in pd.received()] == [400]
    assert pd.events() == []


def test_nobody_listening_fails_cleanly():
    with PagerDutyStandIn() as gone:
        url = gone.url
    with pytest.raises(PagerDutyFailed):
        PagerDuty(KEY, url, backoff_seconds=0.01).trigger("k1", summary="s", source="rollback-bot")


def test_settings(monkeypatch):
    monkeypatch.setenv("ESCALATION_CONTACTS", "U0ERIN S0ONCALL")
    monkeypatch.setenv("EMERGENCY_CONTACTS", '["U0GRACE"]')
    s = load_settings(_env_file=None)
    assert s.primary_contacts == ["U0ERIN", "S0ONCALL"] == s.escalation_contacts
    assert s.emergency_contacts == ["U0GRACE"] and s.escalation_ack_minutes == 15
    assert s.pagerduty_routing_key is None and s.pagerduty_events_url == "https://events.pagerduty.com/v2/enqueue"
    monkeypatch.setenv("PRIMARY_CONTACTS", "U0FRANK")
    assert load_settings(_env_file=None).primary_contacts == ["U0FRANK"]  # the new name wins over its alias
    assert s.model_copy(update={"escalation_contacts": ["U0X"]}).primary_contacts == ["U0X"]
    monkeypatch.setenv("PAGERDUTY_ROUTING_KEY", KEY)
    s = load_settings(_env_file=None)
    assert KEY not in repr(s) and KEY not in str(s.model_dump())
    assert KEY in secret_values(s)  # redacted from every log line
    for bad, why in [("http://10.1.2.3/v2/enqueue", "https"), ("https://events.pagerduty.com/v2/change/enqueue",
                                                              "/v2/enqueue"), ("events.pagerduty.com", "https")]:
        monkeypatch.setenv("PAGERDUTY_EVENTS_URL", bad)
        with pytest.raises(ConfigError, match=f"PAGERDUTY_EVENTS_URL is malformed: .*{why}"):
            load_settings(_env_file=None)
    monkeypatch.setenv("PAGERDUTY_EVENTS_URL", "https://events.eu.pagerduty.com/v2/enqueue")
    assert load_settings(_env_file=None).pagerduty_events_url == "https://events.eu.pagerduty.com/v2/enqueue"
    monkeypatch.setenv("ESCALATION_ACK_MINUTES", "0")
    with pytest.raises(ConfigError, match="ESCALATION_ACK_MINUTES"):
        load_settings(_env_file=None)
