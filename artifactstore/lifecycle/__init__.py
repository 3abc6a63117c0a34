"""The lifecycle of stored data: what is live and what is hot, tiering, pulls, garbage collection.

Owns: roots (the one place that decides liveness and the hot set), tier and pull (moving packs
between the hot and cold tiers), gc (two-phase garbage collection). May import: ``monitoring``
(whose data gc and tier keep or move as roots decide), ``registry``, ``content``, ``backends`` and
the base modules. Never ``serving`` or above.
"""
