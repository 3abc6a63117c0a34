"""Release: what needs the registry and the fleet together, over time.

Owns: rollback drills (drill: swap production and the rollback target, wait until every live node
confirms, time it, swap back) and a model's whole status (status: pointers, rollout, what every
node reports, the last drill, open alerts). The rollout itself (ticks, analysis) is registry
transactions (registry/rollout.py); heartbeats are written by followers (serving) in the format
registry/fleet.py defines. May import: ``lifecycle``, ``serving``, ``registry`` and everything below.
Never ``store`` or above.
"""
