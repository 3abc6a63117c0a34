"""The version registry: immutable versions, deployment pointers and an audit log, inside the store.

A ``Registry`` is given the content store it keeps its objects in (refs and registry objects in
its home, bundles through ``put``). Every command is one transaction on one model: read the ref,
compute the new state, write it, compare-and-swap the ref (docs/format.md, "Registry").
"""

import json
import threading
import unicodedata
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import blake3

from ..clock import timestamp
from ..content.kept import forget
from ..content.manifest import canonical_json
from ..content.pack import INPUT_CHANGED
from ..content.store import ContentStore
from ..errors import Conflict, CorruptObject, HistoryDamaged, InvalidInput, InvalidParameter, NotFound, Refused
from ..ids import format_id, parse_id
from .changes import note_change
from .pointers import CANARY, EXPECT_UNSET, NAMES, PRODUCTION, ROLLBACK_TARGET, STAGING, Transition, TransitionRule
from .refs import LATEST, ModelName, Ref, SemVer, parse_version
from .state import (
    STATE_CONTEXT,
    VERSION_CONTEXT,
    VERSION_MAP_CONTEXT,
    AuditEntry,
    ModelState,
    decode_trail,
    decode_version_map,
    default_actor,
    encode_version_map,
    object_key,
    ref_key,
)
from .versioning import check_insertion, check_label, compare, free_bump, next_version, previous_version

if TYPE_CHECKING:
    from .bundle import Bundle

VERSION_MAPS_KEPT = 16  # versions maps kept in memory, by id
UNREADABLE = "unreadable"  # the bundle of a deleted number whose record does not read: equal to no bundle id
Move = dict[str, Any]  # one audit entry's fields before it is numbered: action, pointer, from, to, ...
# A move may carry "state": {field: value} of ModelState to replace (policy, checks, rollout, drill), and
# "evidence": what an automatic decision rested on (recorded in its audit entry).


@dataclass(frozen=True)
class PushResult:
    ref: str
    version: str
    bundle: str
    adapter_hash: str
    change: str
    created: bool
    logical_bytes: int
    new_bytes: int
    warnings: list[str] = field(default_factory=list)


class Registry:
    """Models, their versions and pointers, kept in ``content``'s home next to the data.

    ``rules`` see every pointer move before it is made and may refuse it (pointers.py).
    """

    def __init__(self, content: ContentStore, rules: Sequence[TransitionRule] = ()):
        self.content = content
        self.backend = content.home
        self.rules = list(rules)
        self._version_maps: dict[str, dict[str, str]] = {}
        self._version_maps_lock = threading.Lock()  # a serving process reads states from many threads

    # -- objects and refs ---------------------------------------------------------------------

    def write_object(self, encoded: bytes, context: str) -> str:
        object_id = registry_object_id(encoded, context)
        key = object_key(parse_id(object_id))
        if not self.backend.exists(key):
            self.backend.write(key, encoded)
        return object_id

    def read_object(self, object_id: str, context: str) -> bytes:
        """An immutable registry object, checked against its id."""
        digest = parse_id(object_id)
        encoded = self.backend.read(object_key(digest))
        if blake3.blake3(encoded, derive_key_context=context).digest() != digest:
            raise CorruptObject(f"registry object {object_id} ({object_key(digest)}) does not match its id "
                                "(tampered or damaged)")
        return encoded

    def _read_state(self, model: ModelName) -> tuple[ModelState | None, str | None]:
        head = self._read_head(model)
        if head is None:
            return None, None
        state_id, data, token = head
        state = ModelState.decode(data, state_id, self.read_version_map,
                                  lambda owner: _check_owner(model, state_id, owner))
        return replace(state, id=state_id), token

    def _read_head(self, model: ModelName) -> tuple[str, bytes, str | None] | None:
        """The id and bytes of the model's current state, with its ref's token; None: no such model.
        A ref naming a missing state is a damaged ref, named by its key (and so is one naming
        another model's state: the caller checks that on the state it decodes)."""
        data, token = self.backend.read_ref(ref_key(model))
        if data is None:
            return None
        state_id = ref_target(data, ref_key(model))
        try:
            encoded = self.read_object(state_id, STATE_CONTEXT)
        except NotFound:
            raise CorruptObject(f"{ref_key(model)}: names state {state_id}, which is missing") from None
        return state_id, encoded, token

    def read_state_object(self, state_id: str) -> ModelState:
        return ModelState.decode(self.read_object(state_id, STATE_CONTEXT), state_id, self.read_version_map)

    def read_version_map(self, map_id: str) -> dict[str, str]:
        """A versions map (immutable: kept once read; states of pointer moves share their map)."""
        versions = self._version_maps.get(map_id)
        if versions is None:
            versions = decode_version_map(self.read_object(map_id, VERSION_MAP_CONTEXT), map_id)
            with self._version_maps_lock:  # two threads evicting at once would pop one key twice
                if len(self._version_maps) >= VERSION_MAPS_KEPT:
                    self._version_maps.pop(next(iter(self._version_maps)))
                self._version_maps[map_id] = versions
        return dict(versions)

    def state(self, model: ModelName | str) -> ModelState:
        return self._existing_state(ModelName.parse(model) if isinstance(model, str) else model)[0]

    def _existing_state(self, model: ModelName) -> tuple[ModelState, str | None]:
        state, token = self._read_state(model)
        if state is None:
            raise NotFound(f"no model {model} in the registry")
        return state, token

    def ref_signature(self, model: ModelName) -> tuple:
        """What changes whenever the model's ref is replaced: its token (the hash of the ref, which
        names a state that names its parent, so it never comes back). A local ref is read (a few
        microseconds), not stat-ed: two swaps within one tick of the file system's clock can leave
        an inode number, a modification time and a size that the ref had before."""
        return (self.backend.read_ref(ref_key(model))[1],)

    def ref_file(self, model: ModelName) -> Path | None:
        """The file that holds the model's ref where the registry is a local directory, else None.
        A swap replaces it by a rename in its directory, which a follower can watch."""
        directory = self.backend.capabilities.local_directory
        return None if directory is None else directory / ref_key(model)

    def ref_tokens(self) -> dict[str, str | None]:
        """Every model's ref token now: equal results mean nothing in the registry moved between."""
        return {str(m): self.backend.read_ref(ref_key(m))[1] for m in self.models()}

    def transact(self, model: ModelName, change: Callable[[ModelState], list[Move]], actor: str | None,
                 reason: str, create: bool = False, force: bool = False,
                 read: tuple[ModelState, str | None] | None = None, with_deleted: bool = False) -> ModelState:
        """Apply ``change`` (returning audit fields) to the current state and swap the ref once.
        ``read``: the state and ref token the caller prepared ``change`` from (``resolve_current``);
        the swap then fails if the ref moved since, rather than change a state the caller never saw.

        Every pointer move passes the registry's rules first; with ``force`` (and a reason) a move a
        rule refused is made all the same, the refusal recorded in its audit entry as ``override``.
        The new state records the current one as its parent: the hash chain of the audit log. Losing
        the compare-and-swap raises Conflict; nothing is retried behind the caller's back.
        """
        if force and not reason.strip():
            raise InvalidParameter("--force needs a --reason: the override is recorded in the audit log")
        current, token = read or self._read_state(model)
        if current is None:
            if not create:
                raise NotFound(f"no model {model} in the registry")
            current = ModelState(model)
        at = timestamp()
        actor, reason = _audit_texts(actor or default_actor(), reason)
        # with the deployments the rules judge restorations by; a push or a delete with the deleted numbers
        complete = self._completed(current, with_deleted)
        moves = change(complete)
        self._offer_to_rules(complete, moves, actor, reason, force)
        updated = _apply(complete, moves, at, actor)
        entries = tuple(AuditEntry(current.seq + i + 1, at, actor, m["action"], m.get("pointer"), m.get("from"),
                                   m.get("to"), reason, m.get("percent"), m.get("override"), m.get("evidence"))
                        for i, m in enumerate(moves))
        versions_id = updated.versions_id if updated.versions == current.versions and updated.versions_id else \
            self.write_object(encode_version_map(model, updated.versions), VERSION_MAP_CONTEXT)
        updated = replace(updated, seq=current.seq + len(entries), entries=entries, parent=current.id, id=None,
                          versions_id=versions_id)
        self.content.upgrade_format()  # readers of format 2 would take a state naming its map for damage
        state_id = self.write_object(updated.encode(), STATE_CONTEXT)
        try:
            self.backend.swap_ref(ref_key(model), canonical_json({"state": state_id}), token)
        except Conflict:
            raise Conflict(f"{model} changed while this command ran (another push or pointer move won); "
                           "nothing was changed: check `artifactstore ls` and retry") from None
        note_change(self.backend, model, state_id)
        return replace(updated, id=state_id)

    def refusal(self, state: ModelState, moves: list[Move], actor: str | None, reason: str) -> Refused | None:
        """What the rules would refuse of ``moves`` made to ``state`` now, if anything (nothing is written)."""
        try:
            self._offer_to_rules(self._completed(state), [dict(m) for m in moves], actor or default_actor(), reason,
                                 force=False)
        except Refused as refused:
            return refused
        return None

    def _offer_to_rules(self, state: ModelState, moves: list[Move], actor: str, reason: str, force: bool) -> None:
        """Offer every pointer move to every rule: a refusal raises, or, with ``force``, is recorded in
        the move as its ``override``."""
        for move in moves:
            if move.get("pointer") in NAMES:
                transition = Transition(state.model, move["action"], move["pointer"], move.get("from"),
                                        move.get("to"), move.get("percent"), actor, reason)
                for rule in self.rules:
                    try:
                        rule(self, state, transition)
                    except Refused as refusal:
                        if not force:
                            raise
                        move["override"] = "; ".join(filter(None, [move.get("override"), refusal.refusal]))

    def _completed(self, state: ModelState, with_deleted: bool = False) -> ModelState:
        """``state`` with what each state keeps so that nothing reads the history for it, read once
        from the history of a state written before versions maps (the bundles of deleted versions,
        the last deployments, the deleted numbers); the transaction that writes the model's next
        state carries them on. A state of the map era written before it kept its deleted numbers
        gets them from its history only ``with_deleted`` (a push or a delete): a pointer move must
        not wait for the history (a rollback right after an upgrade), nor fail on a damaged state in
        it; nor does a state whose history does not read to its start get them (they stay unknown)."""
        if state.id is None:  # a model's first state
            return state if state.deleted is not None else replace(state, deleted={})
        if state.map_era:
            if state.deleted is not None or not with_deleted:
                return state
            deleted, whole = self._deleted_in_history(state)
            return replace(state, deleted=deleted) if whole else state
        ever, deployments, _ = self._history(state, whole=True)
        deleted = {v: self.read_version_record(r)["bundle"] for v, r in ever.items() if v not in state.versions}
        current = {self.read_version_record(r)["bundle"] for r in state.versions.values()}
        return replace(state, retired=tuple(sorted(set(deleted.values()) - current)), deleted=deleted,
                       deployments={v: d for v, d in deployments.items() if v in state.versions})

    def deleted_numbers(self, state: ModelState) -> dict[str, str]:
        """The numbers of ``state``'s deleted versions (not pushed again), with their bundles: those
        it keeps, else those its history tells, as far as the history reads (a damaged state ends
        it: what lies beyond it cannot be known, and the numbers found are refused all the same)."""
        return state.deleted if state.deleted is not None else self._deleted_in_history(state)[0]

    def _deleted_in_history(self, state: ModelState) -> tuple[dict[str, str], bool]:
        """(the deleted numbers the history tells, with their bundles; whether it read to its start)."""
        ever, _, whole = self._history(state, whole=False)

        def bundle(record_id: str) -> str:
            try:
                return self.read_version_record(record_id)["bundle"]
            except (CorruptObject, NotFound, KeyError, ValueError):
                return UNREADABLE  # a number whose bundle cannot be read is given to no content
        deleted = {v: bundle(r) for v, r in ever.items() if v not in state.versions}
        return deleted, whole and UNREADABLE not in deleted.values()

    def _history(self, state: ModelState, *, whole: bool) -> tuple[dict[str, str], dict[str, dict[str, str]], bool]:
        """(every version any state of the history had -> its newest record, the last deployment of
        each version, whether the history read to its start) from ``state`` back: with ``whole``
        (a state before versions maps, which must carry them on), a damaged state raises."""
        ever: dict[str, str] = {}
        deployed: dict[str, dict[str, str]] = {}
        try:
            for _, older in self.states(state.model):
                ever.update({v: r for v, r in older.versions.items() if v not in ever})
                for entry in older.entries:
                    if entry.pointer == PRODUCTION and entry.to is not None:
                        deployed.setdefault(entry.to, {"at": entry.at, "by": entry.actor})
        except (CorruptObject, NotFound):
            if whole:
                raise
            return ever, deployed, False
        return ever, deployed, True

    # -- resolving ------------------------------------------------------------------------------

    def resolve_version(self, ref: Ref | str) -> tuple[ModelState, str]:
        """(state, version) named by a ``client/model@…`` ref."""
        model, parsed = _model_ref(ref)
        state = self.state(model)
        return state, _version_in(state, parsed)

    def resolve_current(self, ref: str) -> tuple[str, tuple[ModelState, str | None]]:
        """The version ``ref`` names, with the state it was resolved in and that state's ref token,
        for ``transact(read=...)``: a pointer in ``ref`` means what it means in the state changed."""
        model, parsed = _model_ref(ref)
        read = self._existing_state(model)
        return _version_in(read[0], parsed), read

    def record(self, state: ModelState, version: str) -> dict[str, Any]:
        """The version record of one of ``state``'s versions."""
        return self.read_version_record(state.versions[version])

    def read_version_record(self, record_id: str) -> dict[str, Any]:
        return json.loads(self.read_object(record_id, VERSION_CONTEXT))

    def version_record(self, ref: Ref | str) -> dict[str, Any]:
        state, version = self.resolve_version(ref)
        return self.record(state, version)

    def resolve(self, ref: str) -> str:
        """The content id (``b3:…``) a ref names: a version's bundle, or the id itself."""
        parsed = Ref.parse(ref)
        if parsed.object_id is not None:
            return parsed.object_id
        return self.version_record(parsed)["bundle"]

    # -- push -----------------------------------------------------------------------------------

    def push(self, bundle_dir, ref: str, *, bump: str | None = None, actor: str | None = None,
             reason: str = "") -> PushResult:
        """Store a bundle as a new immutable version.

        ``ref`` is ``client/model@vX.Y.Z``, or ``client/model`` with ``bump="auto"`` to let the
        store pick the next version from what changed. A version whose label disagrees with
        what changed, or an existing version with other content, is refused.
        """
        from .bundle import WEIGHTS, load_bundle, recorded_tensors  # here: bundles need pydantic and YAML

        model, requested = _push_target(ref, bump)
        state = self._completed(self._read_state(model)[0] or ModelState(model))

        def base_tensors(weights: Path) -> tuple[bytes, dict[str, Any]] | None:
            """The id and tensors of the version this push is compared with, if its weights are these
            very bytes (a new inference config, say): a file's id costs half what hashing its tensors does."""
            base = self._comparison_base(state, requested)
            if base is None:
                return None
            file_id = self.content.stored_file_id(weights)
            if file_id is None or format_id(file_id) != base["adapter_hash"]:
                return None
            return file_id, recorded_tensors(base["tensors"])

        bundle = load_bundle(Path(bundle_dir), base_tensors)
        actor, reason = _audit_texts(actor or default_actor(), reason)
        bundle_id = self.content.identify(bundle.path, hashed=bundle.file_ids)
        if requested in state.versions:
            existing = self.record(state, requested)
            if existing["bundle"] != bundle_id:
                raise Conflict(f"{model}@{requested} already exists with different content; versions are immutable: "
                               f"push a new version")
            return PushResult(f"{model}@{requested}", requested, existing["bundle"], existing["adapter_hash"],
                              existing["change"], False, 0, 0)
        deleted = self.deleted_numbers(state)
        if requested in deleted and deleted[requested] != bundle_id:
            raise Conflict(f"{model}@{requested} was deleted, and a deleted version's number never names other "
                           f"content (a server that loaded it may still serve its weights under that name): push "
                           f"it as {self._next_version(state, bundle, deleted)}, or with --bump auto")
        version = requested or self._next_version(state, bundle, deleted)
        previous = previous_version(state, version)
        change = compare(self.record(state, previous), bundle) if previous else None

        def fits(number: str) -> bool:
            """Whether a push of ``number`` would come right after ``previous`` and leave the next number true."""
            if number in state.versions or previous_version(state, number) != previous:
                return False
            try:
                self._check_insertion(state, number, bundle)
            except InvalidParameter:
                return False
            return True

        check_label(version, previous, change, deleted, fits)
        self._check_insertion(state, version, bundle)
        following = next_version(state, version)
        warnings = []
        if bundle.metadata.version not in (None, version):
            said = f"metadata.yaml says version {bundle.metadata.version}"
            if requested is not None:  # the user named a number that the bundle contradicts
                raise InvalidParameter(f"{said}, but the push is {version}")
            warnings.append(f"{said}; the store numbered it {version} ({change.kind if change else 'initial'}: "
                            f"{change.describe() if change else 'the first version'})")
        from_bundle: dict[str, Any] = {
            "base_model": bundle.metadata.base_model, "training_data_hash": bundle.training_data_hashes[0],
            # written only for several datasets, so that a record of one keeps the bytes it had before
            **({"training_data_hashes": bundle.training_data_hashes} if len(bundle.training_data_hashes) > 1 else {}),
            "training_config": bundle.training_config, "eval_scores": bundle.eval_scores,
            "inference_config": bundle.inference_config, "adapter_settings": bundle.adapter_settings,
            "change_description": bundle.metadata.change_description,
        }
        if bundle.metadata.training_examples is not None:
            from_bundle["training_examples"] = bundle.metadata.training_examples
        # load_bundle admits only data canonical JSON holds; encoding it here as well means that if it
        # ever admits more, the push fails before its first write instead of after the packs are stored.
        canonical_json(from_bundle)
        # A file the store holds whole under its validated id is stored as validated, unread; any other
        # is read again, and must still be what was validated: the files may change while the push runs.
        stored = self.content.put(bundle.path, hashed=bundle.file_ids)
        self._check_stored_as_validated(stored.id, bundle)
        adapter_hash = format_id(bundle.file_ids[WEIGHTS])
        record: dict[str, Any] = from_bundle | {
            "kind": "version", "client": model.client, "model": model.model, "version": version,
            "adapter_hash": adapter_hash, "bundle": stored.id,
            "change": change.kind if change else "initial", "previous": previous,
            "created_at": timestamp(), "created_by": actor,
            "tensors": {name: t.__dict__ | {"shape": list(t.shape)} for name, t in bundle.tensors.items()},
        }
        record_id = self.write_object(canonical_json(record), VERSION_CONTEXT)

        def add_version(current: ModelState) -> list[Move]:
            if version in current.versions:
                raise Conflict(f"{model}@{version} was pushed by someone else while this push ran")
            if self.deleted_numbers(current).get(version, stored.id) != stored.id:  # the tree stored, not identified
                raise Conflict(f"{model}@{version} was deleted, and the tree this push stored is not the one it had "
                               "(it was deleted meanwhile, or a file changed while the push ran): push again")
            if previous_version(current, version) != previous or next_version(current, version) != following:
                raise Conflict(f"{model} gained a version next to {version} while this push ran; push again")
            return [{"action": "push", "from": previous, "to": version, "version_record": record_id}]

        self.transact(model, add_version, actor, reason or bundle.metadata.change_description, create=True,
                      with_deleted=True)
        return PushResult(f"{model}@{version}", version, stored.id, adapter_hash, record["change"], True,
                          stored.logical_bytes, stored.new_bytes, warnings)

    def _comparison_base(self, state: ModelState, requested: str | None) -> dict[str, Any] | None:
        """The record of the version a push of ``requested`` (None: the next one) is compared with."""
        if requested in state.versions:
            return None  # not compared: a push of an existing version only checks it is the same
        below = previous_version(state, requested) if requested else next(reversed(state.sorted_versions()), None)
        return self.record(state, below) if below else None

    def _next_version(self, state: ModelState, bundle: "Bundle", deleted: Collection[str]) -> str:
        """The number ``--bump auto`` gives ``bundle``: the latest version's, bumped as the change
        says, past the numbers of ``deleted`` versions; for a model without versions, the first
        major number above every deleted one."""
        if not state.versions:
            return str(SemVer(max((parse_version(v).major for v in deleted), default=0), 0, 0).bump("major"))
        latest = state.sorted_versions()[-1]
        return str(free_bump(parse_version(latest), compare(self.record(state, latest), bundle).kind, deleted))

    def _check_insertion(self, state: ModelState, version: str, bundle: "Bundle") -> None:
        """Refuse ``bundle`` as ``version`` where it would make the next version's number wrong."""
        following = next_version(state, version)
        if following is not None:  # equal or not, what changed between two versions reads the same both ways
            check_insertion(version, following, compare(self.record(state, following), bundle))

    def _check_stored_as_validated(self, tree_id: str, bundle: "Bundle") -> None:
        """Refuse the push (before any record names the tree, which gc then collects) if a file of the
        stored tree is not the one ``load_bundle`` validated."""
        tree = self.content.read_manifest(tree_id)
        stored = {e.path: e.file for e in getattr(tree, "entries", [])}
        for path, file_id in sorted(bundle.file_ids.items()):
            if stored.get(path) != file_id:
                raise InvalidInput(f"{bundle.path / path}: {INPUT_CHANGED}")

    # -- pointer moves --------------------------------------------------------------------------

    def stage(self, ref: str, *, actor: str | None = None, reason: str = "", expect: str | None = None) -> ModelState:
        """Point ``staging`` at a version."""
        return self._move(ref, "stage", STAGING, actor, reason, expect)

    def promote(self, ref: str, *, actor: str | None = None, reason: str = "", expect: str | None = None,
                force: bool = False, prepare: Callable[[ModelState, str], None] | None = None) -> ModelState:
        """Point ``production`` at a version (``client/model`` alone: the staged one); the previous
        production becomes the rollback target, and staging is cleared if it named this version.
        ``force`` overrides a rule's refusal (see ``transact``). ``prepare(state, version)`` runs in
        the transaction before anything is written: what it raises refuses the promote."""
        if "@" not in ref:
            model = ModelName.parse(ref)
            if self.state(model).pointer(STAGING) is None:
                raise InvalidParameter(f"{model} has nothing staged: promote {model}@VERSION")
            ref = f"{model}@{STAGING}"
        return self._move(ref, "promote", PRODUCTION, actor, reason, expect, force, prepare)

    def set_rollback_target(self, ref: str, *, actor: str | None = None, reason: str = "",
                            expect: str | None = None, force: bool = False) -> ModelState:
        """Name the version a rollback returns production to (the seeds: name it for each client).
        ``force``: see ``transact`` (a version that never served needs production's checks)."""
        return self._move(ref, "target", ROLLBACK_TARGET, actor, reason, expect, force)

    def _move(self, ref: str, action: str, pointer: str, actor, reason, expect, force: bool = False,
              prepare: Callable[[ModelState, str], None] | None = None) -> ModelState:
        version, read = self.resolve_current(ref)

        def move(current: ModelState) -> list[Move]:
            _check_expected(current, pointer, expect)
            _check_known(current, version)
            old = current.pointer(pointer)
            if old == version:
                raise InvalidParameter(f"{current.model}@{pointer} is already {version}")
            if pointer == ROLLBACK_TARGET and current.pointer(PRODUCTION) == version:
                raise InvalidParameter(f"{version} is {current.model}@production: a rollback target must be another "
                                       f"version")
            moves = [{"action": action, "pointer": pointer, "from": old, "to": version}]
            if pointer == PRODUCTION:
                if old is not None:
                    moves.append({"action": action, "pointer": ROLLBACK_TARGET,
                                  "from": current.pointer(ROLLBACK_TARGET), "to": old})
                moves += _candidacies_ended(current, version, action)
            if prepare is not None:
                prepare(current, version)
            return moves

        return self.transact(read[0].model, move, actor, reason, force=force, read=read)

    def rollback(self, model: str, *, to: str | None = None, actor: str | None = None, reason: str = "",
                 expect: str | None = None, evidence: dict[str, Any] | None = None,
                 force: bool = False) -> ModelState:
        """Point ``production`` back at the rollback target (or ``to``). The rollback target then
        becomes the production version before the one rolled back to (a second rollback goes
        further back), or is cleared if there was none. ``evidence``: what an automatic rollback
        rested on, kept in its audit entry. ``force``: see ``transact`` (``to`` a version that never
        served needs production's checks)."""
        name = ModelName.parse(model)
        if to is not None:
            parse_version(to)

        def move(current: ModelState) -> list[Move]:
            _check_expected(current, PRODUCTION, expect)
            target = to or current.pointer(ROLLBACK_TARGET)
            if target is None:
                live = current.pointer(PRODUCTION)
                why = f"{live} is the first version it had in production" if live else "nothing is in production"
                raise InvalidParameter(f"{name} has no rollback target ({why}): roll back with --to VERSION, or "
                                       f"name one with `artifactstore target set`")
            _check_known(current, target)
            old = current.pointer(PRODUCTION)
            if old == target:
                raise InvalidParameter(f"{name}@production is already {target}")
            moves: list[Move] = [{"action": "rollback", "pointer": PRODUCTION, "from": old, "to": target}]
            if evidence is not None:
                moves[0]["evidence"] = evidence
            next_target = current.previous_production(target, skipping=old)
            if current.pointer(ROLLBACK_TARGET) != next_target:
                moves.append({"action": "rollback", "pointer": ROLLBACK_TARGET,
                              "from": current.pointer(ROLLBACK_TARGET), "to": next_target})
            return moves + _candidacies_ended(current, target, "rollback")

        return self.transact(name, move, actor, reason, force=force)

    def set_canary(self, ref: str, percent: int, *, actor: str | None = None, reason: str = "",
                   expect: str | None = None, force: bool = False,
                   evidence: dict[str, Any] | None = None) -> ModelState:
        """Send ``percent`` of traffic to a version; 0 ends the canary. ``force``: see ``transact``;
        ``evidence``: what an automatic end rested on, kept in its audit entry."""
        if not 0 <= percent <= 100:
            raise InvalidParameter(f"canary percent must be between 0 and 100, not {percent}")
        version, read = self.resolve_current(ref)

        def move(current: ModelState) -> list[Move]:
            old = current.pointer(CANARY)
            _check_expected(current, CANARY, expect)
            _check_known(current, version)
            if percent == 0:
                if old is None:
                    raise InvalidParameter(f"{current.model} has no canary")
                if old != version:  # a --percent 0 meant for another version must not end this canary
                    raise InvalidParameter(f"{current.model}'s canary is {old}, not {version}")
                moved: Move = {"action": "canary", "pointer": CANARY, "from": old, "to": None}
            else:
                moved = {"action": "canary", "pointer": CANARY, "from": old, "to": version, "percent": percent}
            return [moved | ({"evidence": evidence} if evidence is not None else {})]

        return self.transact(read[0].model, move, actor, reason, force=force, read=read)

    def pin(self, ref: str, *, actor: str | None = None, reason: str = "") -> ModelState:
        """Keep a version in the hot tier and out of garbage collection."""
        return self._pin(ref, True, actor, reason)

    def unpin(self, ref: str, *, actor: str | None = None, reason: str = "") -> ModelState:
        return self._pin(ref, False, actor, reason)

    def _pin(self, ref: str, pinned: bool, actor, reason) -> ModelState:
        version, read = self.resolve_current(ref)

        def move(current: ModelState) -> list[Move]:
            _check_known(current, version)
            if (version in current.pins) == pinned:
                raise InvalidParameter(f"{current.model}@{version} is {'already' if pinned else 'not'} pinned")
            return [{"action": "pin" if pinned else "unpin", "pointer": "pins",
                     "from": None if pinned else version, "to": version if pinned else None}]

        return self.transact(read[0].model, move, actor, reason, read=read)

    def delete(self, ref: str, *, actor: str | None = None, reason: str = "") -> ModelState:
        """Remove a version (a data removal request); refused while a pointer, a pin or a running
        rollout names it.
        gc then reclaims what only it used."""
        parsed = Ref.parse(ref)
        if not parsed.is_version or parsed.model is None:
            raise InvalidParameter(f"delete takes client/model@vX.Y.Z, not {ref}")
        version = parsed.target

        def remove(current: ModelState) -> list[Move]:
            if version not in current.versions:
                raise InvalidParameter(f"{current.model} has no version {version}")
            named = current.where(version)
            if named:
                advice = "unpin it first" if named == ["pinned"] else \
                    "move the pointer first" + (" and unpin it" if "pinned" in named else "")
                raise Conflict(f"{ref} is still {', '.join(named)}: {advice}")
            # a rollout reads both versions at every tick, even after a forced move took a pointer off one
            rollout = current.rollout or {}
            if version in (rollout.get("version"), rollout.get("production")):
                raise Conflict(f"{ref} is in {current.model}'s running rollout: abort the rollout first "
                               f"(`artifactstore rollout abort {current.model}`)")
            bundles[:] = [self.record(current, version)["bundle"]]
            return [{"action": "delete", "pointer": None, "from": version, "to": None, "bundle": bundles[0]}]

        bundles: list[str] = []
        state = self.transact(parsed.model, remove, actor, reason, with_deleted=True)
        # after the commit: a failed delete changes nothing; a delete killed here leaves them kept
        try:
            files = [format_id(e.file) for e in getattr(self.content.read_manifest(bundles[0]), "entries", ())]
        except (CorruptObject, NotFound):  # verify names a missing bundle; its own record goes all the same
            files = []
        forget(self.content.home, [bundles[0], *files])
        return state

    # -- history --------------------------------------------------------------------------------

    def states(self, model: ModelName | str) -> Iterator[tuple[str, ModelState]]:
        """Every state of a model, newest first, with its id (each with its versions: for what
        needs past versions; the audit log needs only ``trail``)."""
        state_id = self.state(model).id
        while state_id is not None:
            state = self.read_state_object(state_id)
            yield state_id, state
            state_id = state.parent

    def trail(self, model: ModelName | str, start: str | None = None) -> Iterator[tuple[str, tuple[AuditEntry, ...]]]:
        """(state id, its audit entries) of every state of a model, newest first (from ``start``, a
        state id, else the current one): the hash-chained audit log, read without any versions map."""
        head_of = None
        if start is None:
            head_of = ModelName.parse(model) if isinstance(model, str) else model
            head = self._read_head(head_of)
            if head is None:
                raise NotFound(f"no model {head_of} in the registry")
            state_id, data, _ = head
        else:
            state_id, data = start, self.read_object(start, STATE_CONTEXT)
        while True:
            entries, parent, owner = decode_trail(data, state_id)
            if head_of is not None:
                _check_owner(head_of, state_id, owner)
                head_of = None
            yield state_id, entries
            if parent is None:
                return
            state_id, data = parent, self.read_object(parent, STATE_CONTEXT)

    def log(self, model: ModelName | str, *, limit: int | None = None) -> list[AuditEntry]:
        """The audit log, oldest first; ``limit``: only the newest entries, reading only the states
        that hold them."""
        entries: list[AuditEntry] = []
        try:
            for _, made in self.trail(model):
                entries.extend(reversed(made))
                if limit is not None and len(entries) >= limit:
                    break
        except CorruptObject as exc:
            if not entries:  # the ref or the newest state: verify --repair rebuilds the ref
                raise
            raise history_damaged(model, entries, exc) from None
        return entries[:limit][::-1] if limit is not None else entries[::-1]

    def models(self) -> list[ModelName]:
        found = []
        for key in self.backend.list("registry/refs"):
            if key.endswith(".json"):
                client, model = key.removeprefix("registry/refs/").removesuffix(".json").split("/")
                found.append(ModelName(client, model))
        return sorted(found, key=str)


def _model_ref(ref: Ref | str) -> tuple[ModelName, Ref]:
    parsed = Ref.parse(ref) if isinstance(ref, str) else ref
    if parsed.model is None:
        raise InvalidParameter(f"{parsed} is a content id; this needs client/model@VERSION or @POINTER")
    return parsed.model, parsed


def _version_in(state: ModelState, ref: Ref) -> str:
    if ref.is_version:
        if ref.target not in state.versions:
            deleted = " (it was deleted)" if ref.target in (state.deleted or {}) else ""
            raise NotFound(f"{ref.model} has no version {ref.target}{deleted}")
        return ref.target
    if ref.target == LATEST:
        if not state.versions:
            raise NotFound(f"{ref.model} has no versions")
        return state.sorted_versions()[-1]
    version = state.pointer(ref.target)
    if version is None:
        raise NotFound(f"{ref.model}@{ref.target} is not set")
    return version


def ref_target(data: bytes, key: str) -> str:
    """The state id a ref's bytes name; anything else is a damaged ref, named by its key."""
    try:
        state_id = json.loads(data)["state"]
        parse_id(state_id)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # parse_id's InvalidParameter is a ValueError
        raise CorruptObject(f"{key}: malformed ref ({exc})") from None
    return state_id


def _check_owner(model: ModelName, state_id: str, owner: ModelName) -> None:
    """A ref naming another model's state is damaged, named by its key: a command would otherwise
    show, and write into this model's ref, the other model's versions."""
    if owner != model:
        raise CorruptObject(f"{ref_key(model)}: names state {state_id}, which is a state of {owner}, not of {model}")


def _push_target(ref: str, bump: str | None) -> tuple[ModelName, str | None]:
    if bump not in (None, "auto"):
        raise InvalidParameter(f"unknown --bump {bump!r}: the only choice is 'auto'")
    name, at, target = ref.partition("@")
    model = ModelName.parse(name)
    if bump == "auto":
        if at:
            raise InvalidParameter("--bump auto picks the version: give client/model without @VERSION")
        return model, None
    if not at:
        raise InvalidParameter(f"push needs a version: {ref}@vX.Y.Z, or --bump auto")
    parse_version(target)
    return model, target


def _candidacies_ended(state: ModelState, production: str, action: str) -> list[Move]:
    """The canary and staging cleared where they name the version going to production: it is no
    candidate any more."""
    return [{"action": action, "pointer": cleared, "from": production, "to": None}
            for cleared in (CANARY, STAGING) if state.pointer(cleared) == production]


def registry_object_id(encoded: bytes, context: str) -> str:
    """The id a registry object of these bytes has in ``context`` (``Registry.write_object``)."""
    return format_id(blake3.blake3(encoded, derive_key_context=context).digest())


def _apply(state: ModelState, moves: list[Move], at: str, actor: str) -> ModelState:
    versions, pointers = dict(state.versions), dict(state.pointers)
    canary, pins, predecessors = state.canary, set(state.pins), dict(state.predecessors)
    retired, deployments = set(state.retired), dict(state.deployments)
    deleted = None if state.deleted is None else dict(state.deleted)  # None: not known (kept unknown)
    fields: dict[str, Any] = {}
    for m in moves:
        fields.update(m.get("state", {}))
        if m["action"] == "push":
            versions[m["to"]] = m["version_record"]
            if deleted is not None:
                deleted.pop(m["to"], None)  # its own bundle pushed again
        elif m["action"] == "delete":
            del versions[m["from"]]
            if deleted is not None:
                deleted[m["from"]] = m["bundle"]
            predecessors = _without(predecessors, m["from"])
            deployments.pop(m["from"], None)
            retired.add(m["bundle"])
            fields["checks"] = {v: c for v, c in fields.get("checks", state.checks).items() if v != m["from"]}
        elif m.get("pointer") is None:  # a change of the state's other fields only
            continue
        elif m["pointer"] == CANARY:
            canary = {"version": m["to"], "percent": m["percent"]} if m["to"] else None
        elif m["pointer"] == "pins":
            (pins.add if m["to"] else pins.discard)(m["to"] or m["from"])
        elif m["to"] is None:
            pointers.pop(m["pointer"], None)
        else:
            pointers[m["pointer"]] = m["to"]
            if m["pointer"] == PRODUCTION:
                deployments[m["to"]] = {"at": at, "by": actor}
                if m["action"] not in ("rollback", "drill") and m["from"]:  # those restore what it replaced
                    predecessors[m["to"]] = m["from"]
    return replace(state, versions=versions, pointers=pointers, canary=canary,
                   pins=tuple(sorted(pins, key=parse_version)), predecessors=predecessors,
                   retired=tuple(sorted(retired)), deployments=deployments, deleted=deleted, **fields)


def _without(predecessors: dict[str, str], deleted: str) -> dict[str, str]:
    """The production chain without a deleted version: what came after it now follows what came
    before it."""
    before = predecessors.get(deleted)
    rewired = {v: before if p == deleted else p for v, p in predecessors.items() if v != deleted}
    return {v: p for v, p in rewired.items() if p is not None}


def _check_expected(state: ModelState, pointer: str, expect: str | None) -> None:
    """Refuse unless ``pointer`` names the version ``expect``, or, for ``"none"`` (which no version is
    called), names none; ``None`` checks nothing."""
    if expect is None:
        return
    if expect != EXPECT_UNSET:
        parse_version(expect)
    current = state.pointer(pointer)
    if (current or EXPECT_UNSET) != expect:
        raise Conflict(f"{state.model}@{pointer} is {current or 'unset'}, not "
                       f"{'unset' if expect == EXPECT_UNSET else expect} as expected; nothing changed")


def _audit_texts(actor: str, reason: str) -> tuple[str, str]:
    """Who and why as the audit log keeps them, checked before anything is written. Refused: text
    the log (UTF-8 JSON) cannot hold (an environment variable or argument with bytes that are not
    UTF-8 arrives with surrogates). Escaped (``\\n``, ``\\x1b``, ``\\u202e``): what would forge its
    lines where people read it (a line break starts a fake entry, a carriage return or an escape
    sequence overwrites the name on a terminal, a bidirectional override reverses what follows).
    Escaped, not refused: an automatic rollback's reason quotes a server's error text, and must
    not fail for its line breaks."""
    for option, text in (("--by", actor), ("--reason", reason)):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidParameter(f"{option} {text!r} is not valid UTF-8 text") from None
    return _one_line(actor), _one_line(reason)


def _one_line(text: str) -> str:
    if text.isprintable():  # the common case: no control character, no override
        return text
    return "".join(ch.encode("unicode_escape").decode("ascii") if unicodedata.category(ch) in _LINE_BREAKING or
                   ch in _BIDI_CONTROLS else ch for ch in text)


_LINE_BREAKING = ("Cc", "Zl", "Zp")  # controls, and the line and paragraph separators splitlines() splits on
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _check_known(state: ModelState, version: str) -> None:
    if version not in state.versions:
        raise NotFound(f"{state.model} has no version {version}")


def history_damaged(model: ModelName | str, newest_first: list[AuditEntry], cause: CorruptObject) -> HistoryDamaged:
    """What a walk down ``model``'s history raises when it meets a damaged state after reading the
    entries ``newest_first``."""
    return HistoryDamaged(f"{model}: the audit log reads only down to entry {newest_first[-1].seq}: {cause}; the "
                          "older entries are lost unless a backup holds that object (the versions, pointers and "
                          "weights do not depend on it)", newest_first[::-1])
