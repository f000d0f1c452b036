"""handlers.incident_views: the thread replies of the swap's steps and of the states a person must act on."""

from __future__ import annotations

import handlers.incident_views as iv
from tests.handlers.test_kind_text import incident


def test_the_swap_steps_reply_with_their_details():
    d = {"backup": "emergency_x", "model_sha256": "abcdef0123456789", "from": "backup_<1>", "version": "v2",
         "rows": 5, "prediction_day": "2026-01-01"}
    assert iv.step_reply(incident(), "emergency_backup", d) == \
        ":floppy_disk: Emergency backup `emergency_x` taken (sha256 abcdef012345…)."
    assert iv.step_reply(incident(), "restore", d) == \
        ":arrows_counterclockwise: `backup_&lt;1&gt;` restored atomically into place."
    assert iv.step_reply(incident(), "record", d) == \
        ":ledger: `model_deployment_log`: `v2` is production (one transaction)."
    assert iv.step_reply(incident(), "verify", d) == \
        ":mag: Verified: model loads, checksum matches, prediction on 5 rows of 2026-01-01 is finite and varies."


def test_a_stopped_rollback_replies_with_its_error_or_a_stand_in():
    stuck = iv.state_reply(incident(state="revert_failed", error="disk <full>"))
    assert stuck.startswith(":sos: *Rollback failed and the revert failed*: disk &lt;full&gt; Escalated;")
    assert iv.state_reply(incident(state="halt_not_effective")) == (
        ":rotating_light: *Halt not effective*: trades continue after the halt Escalation is paged. An approver"
        " other than the requester may *Proceed anyway* on the card.")
    assert iv.state_reply(incident(kind="resume", state="halt_not_effective")) != \
        iv.state_reply(incident(state="halt_not_effective")), "a resume override has replies of its own"
