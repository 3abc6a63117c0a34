"""The ``artifactstore`` command. User errors become one line on stderr and exit status 1 (a usage
error: 2).

Commands live in one module per wing; importing them adds them to the ``cli`` group.
"""

from . import content, demo, lifecycle, monitoring, registry, release, rollout, serving, web  # noqa: F401 - each adds its commands
from .base import cli, run_reporting_errors


def main() -> None:
    run_reporting_errors(cli)
