"""The runbook's automated steps, one module each (their order is the table in ``core.runbook.steps``).

    state it runs in   step (journal, card, report)   module
    approved           preflight                      preflight.py        (pre-flight again, right before the halt)
    halting            halt                           halt.py             (runbook step 2: stop automated trading)
    halted             verify_halt                    halt.py             (the quiet wait: no trade after the halt)
    backing_up         emergency_backup               emergency_backup.py (step 4: back up the current model)
    restoring          restore                        restore.py          (step 4: the approved backup in place)
    recording          record                         record.py           (step 4: model_deployment_log)
    verifying          verify                         verify.py           (step 5)
    resuming           resume                         resume.py           (step 6: resume automated trading)
    reverting          revert                         revert.py           (the undo when a swap step fails)

``executor.py`` runs them: the incident's advisory lock and fencing token, step timeouts, attempts, fail or
revert, and ``recover`` after a crash. ``journal.py`` has the journal helpers every step shares.
"""
