"""Monitoring: drift of inputs and outputs per version (PSI, kept as Zarr v3 arrays), eval runs
against the launch baseline, labelled-data growth, and the retraining signals built on them.

Owns: the PSI definition (psi), baselines (baseline), the Zarr layout of monitoring data
(arrays), the ``Monitor`` and recording (observe), drift reports and version comparison
(report), alerts (alerts), retraining signals (signals), the PNG plot (plot), verification
(verify). May import: ``registry``, ``content``, ``backends`` and the base modules. Never
``lifecycle``, ``serving`` or above: gc and tier ask ``lifecycle.roots`` what to keep and move,
and call this wing to do it.
"""
