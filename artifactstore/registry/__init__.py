"""The version registry: models, immutable versions, deployment pointers, the audit log.

Owns: refs and names (refs), pointer kinds and the transition rules a move must pass (pointers),
bundles (bundle), states and audit entries (state), the versioning rules (versioning), the
``Registry`` and its transactions (registry), the store-wide change marker a shared store's
followers poll (changes), read-only queries (queries), registry verification
(verify), and release control: a model's policy (policy), the eval gate (gate), human review
(review), the rule that enforces them (checks), event hooks and their outbox (hooks), client
notices (notices); which version serves a request (routing). May import: ``content`` (bundles are
stored as content; registry objects live in the content store's home), ``backends`` and the base
modules. Never ``lifecycle``, ``serving`` or above.
"""
