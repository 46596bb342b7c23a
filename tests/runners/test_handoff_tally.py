"""Failed handoffs are counted once per (step, attempt, field) and split by cause: lost or the model's error."""

from __future__ import annotations

from coordlab.adapters.base import Variant
from coordlab.adapters.registry import get_adapter
from coordlab.runners.faults import Fault, FaultPlan, ForcedFault, load_profile
from coordlab.runners.handoff_tally import HandoffTally, tally_handoffs
from coordlab.runners.harness import run_episode
from coordlab.runners.simulator import HandoffIssue, RequestRecord, Simulator
from coordlab.tasks.loader import load_suite_task

NONE = load_profile("none")


def request(seq: int, step: str, attempt: int, *issues: HandoffIssue) -> RequestRecord:
    return RequestRecord(seq=seq, episode_id="e", role="coordinator", step=step, attempt=attempt, kind="tool_call",
                         fault=None, prompt_tokens=1, completion_tokens=1, retry_count=0, stream=False, status=200,
                         handoff_issues=issues)


def missing(field: str, cause: str = "lost") -> HandoffIssue:
    return HandoffIssue(field, "missing", "value", None, cause)


def test_one_missing_value_seen_by_every_request_of_a_tool_loop_is_one_failed_handoff() -> None:
    loop = [request(seq, "send", 0, missing("confirmation")) for seq in range(3)]
    assert tally_handoffs(loop) == HandoffTally(lost=1, model_errors=0)


def test_each_attempt_and_each_field_is_its_own_handoff() -> None:
    records = [request(0, "send", 0, missing("confirmation"), missing("customer_email")),
               request(1, "send", 0, missing("confirmation")),
               request(2, "send", 1, missing("confirmation")),
               request(3, "update_crm", 0, missing("confirmation"))]
    assert tally_handoffs(records).lost == 4


def test_the_cause_is_the_last_request_s_view_of_the_handoff() -> None:
    records = [request(0, "send", 0, missing("confirmation", "lost")),
               request(1, "send", 0, missing("confirmation", "model_error"))]
    assert tally_handoffs(records) == HandoffTally(lost=0, model_errors=1)
    assert tally_handoffs(records[::-1]) == HandoffTally(lost=1, model_errors=0)


def test_unrecovered_misroutes_are_model_errors() -> None:
    tally = tally_handoffs([request(0, "send", 0, missing("confirmation"))], unrecovered_misroutes=2)
    assert tally == HandoffTally(lost=1, model_errors=2) and tally.failed == 3


def test_a_framework_that_drops_a_field_loses_handoffs_while_plain_loses_none(simulator: Simulator) -> None:
    task = load_suite_task("appointment_rebooking")
    plan = FaultPlan(NONE, 0)
    broken = run_episode(get_adapter("control_drop_field"), task, Variant.LINEAR, simulator, plan)
    correct = run_episode(get_adapter("plain"), task, Variant.LINEAR, simulator, plan)
    assert broken.counts.handoffs_lost >= 1 and broken.counts.handoff_model_errors == 0
    assert correct.counts.handoff_failures == 0


def test_a_lost_field_and_a_wrong_one_are_told_apart_and_counted_per_handoff(simulator: Simulator) -> None:
    """control_drop_field hands each step only the previous step's answer: send misses customer_email and update_crm
    misses slot (both lost); the draft's wrong confirmation arrives as the writer emitted it (the model's error).
    Each gap shows on both requests of its step's tool loop: six issues, three handoffs."""
    plan = FaultPlan(NONE, 0, (ForcedFault("draft", Fault.WRONG_VALUE),))
    result = run_episode(get_adapter("control_drop_field"), load_suite_task("appointment_rebooking"), Variant.LINEAR,
                         simulator, plan)
    issues = {(r.step, i.field, i.cause) for r in result.records for i in r.handoff_issues}
    assert issues == {("send", "customer_email", "lost"), ("send", "confirmation", "model_error"),
                      ("update_crm", "slot", "lost")}
    assert sum(len(r.handoff_issues) for r in result.records) == 6
    assert (result.counts.handoffs_lost, result.counts.handoff_model_errors) == (2, 1)


def test_an_omitted_field_is_the_model_s_error_not_the_framework_s(simulator: Simulator) -> None:
    plan = FaultPlan(NONE, 0, (ForcedFault("stage_2", Fault.OMITTED_FIELD),))
    result = run_episode(get_adapter("plain"), load_suite_task("chain", {"n": 4}), Variant.LINEAR, simulator, plan)
    assert (result.counts.handoffs_lost, result.counts.handoff_model_errors) == (0, 1)
