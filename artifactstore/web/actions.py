"""What a signed-in person can do from a model page: each action is one ``Store`` call, so that it
passes the release rule, records an audit entry and announces its hook events exactly as the same
command would.

An action gets the form's fields, the model, who acts (``ui:NAME``) and the reason, which the app
has already required.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..errors import InvalidParameter
from ..registry.pointers import EXPECT_UNSET
from ..registry.refs import ModelName, parse_version
from ..store import Store

Form = Mapping[str, str]


@dataclass(frozen=True)
class Action:
    title: str
    run: Callable[[Store, ModelName, Form, str, str], str]  # (store, model, form, actor, reason) -> what happened


def _version(form: Form, field: str, required: bool = True) -> str | None:
    value = form.get(field, "").strip()
    if not value:
        if required:
            raise InvalidParameter(f"choose a version ({field})")
        return None
    parse_version(value)
    return value


def _expect(form: Form) -> str | None:
    """The version the page showed at the pointer being moved, or ``EXPECT_UNSET`` where the page
    showed it unset (an empty field): the move is refused if the pointer moved since. A form without
    the field checks nothing, as a command without --expect."""
    if "expect" not in form:
        return None
    return _version(form, "expect", required=False) or EXPECT_UNSET


def promote(store: Store, model: ModelName, form: Form, actor: str, reason: str) -> str:
    version = _version(form, "version")
    store.promote(f"{model}@{version}", actor=actor, reason=reason, expect=_expect(form))
    return f"{model}@{version} is production"


def rollback(store: Store, model: ModelName, form: Form, actor: str, reason: str) -> str:
    state = store.rollback(str(model), to=_version(form, "to", required=False), actor=actor, reason=reason,
                           expect=_expect(form))
    return f"{model} rolled back: production is {state.pointer('production')}"


def set_target(store: Store, model: ModelName, form: Form, actor: str, reason: str) -> str:
    version = _version(form, "version")
    store.set_rollback_target(f"{model}@{version}", actor=actor, reason=reason, expect=_expect(form))
    return f"{model}'s rollback target is {version}"


def review(store: Store, model: ModelName, form: Form, actor: str, reason: str) -> str:
    version = _version(form, "version")
    verdict = form.get("verdict")
    if verdict not in ("approve", "reject"):
        raise InvalidParameter("choose approve or reject")
    try:
        samples = int(form.get("samples", ""))
    except ValueError:
        raise InvalidParameter("say how many outputs were reviewed (samples)") from None
    store.review(f"{model}@{version}", approve=verdict == "approve", actor=actor, samples=samples, notes=reason)
    return f"{model}@{version} {'approved' if verdict == 'approve' else 'rejected'}"


def rollout_start(store: Store, model: ModelName, form: Form, actor: str, reason: str) -> str:
    version = _version(form, "version")
    state = store.start_rollout(f"{model}@{version}", actor=actor, reason=reason)
    return f"rolling out {model}@{version}: canary at {state.canary['percent'] if state.canary else 0}%"


def rollout_pause(store: Store, model: ModelName, form: Form, actor: str, reason: str) -> str:
    store.pause_rollout(str(model), actor=actor, reason=reason)
    return f"{model}'s rollout is paused"


def rollout_resume(store: Store, model: ModelName, form: Form, actor: str, reason: str) -> str:
    store.resume_rollout(str(model), actor=actor, reason=reason)
    return f"{model}'s rollout goes on"


def rollout_abort(store: Store, model: ModelName, form: Form, actor: str, reason: str) -> str:
    store.abort_rollout(str(model), actor=actor, reason=reason)
    return f"{model}'s rollout is aborted: the canary is at 0%, production unchanged"


ACTIONS: dict[str, Action] = {
    "review": Action("Review", review),
    "promote": Action("Promote", promote),
    "rollback": Action("Roll back", rollback),
    "target": Action("Set the rollback target", set_target),
    "rollout-start": Action("Start a rollout", rollout_start),
    "rollout-pause": Action("Pause the rollout", rollout_pause),
    "rollout-resume": Action("Resume the rollout", rollout_resume),
    "rollout-abort": Action("Abort the rollout", rollout_abort),
}
