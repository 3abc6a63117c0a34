"""What a signed-in person can do from a model page: each action is one ``Store`` call, so that it
passes the release rule, records an audit entry and announces its hook events exactly as the same
command would.

An action gets the form's fields, the model, who acts (``ui:NAME``) and the reason, which the app
has already required. Issue #11's rollout start, pause and abort are entries of ``ACTIONS`` like
these.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..errors import InvalidParameter
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
    """The version the page showed at the pointer being moved: the move is refused if it moved since."""
    return _version(form, "expect", required=False)


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


ACTIONS: dict[str, Action] = {
    "review": Action("Review", review),
    "promote": Action("Promote", promote),
    "rollback": Action("Roll back", rollback),
    "target": Action("Set the rollback target", set_target),
    # issue #11: "rollout-start", "rollout-pause", "rollout-abort"
}
