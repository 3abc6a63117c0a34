"""The README's tour runs as written: each `$` line in order, in an empty directory."""

import os
import shlex
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def tour() -> list[tuple[str, str | None]]:
    """(command, the error it must fail with, if the README shows one) for each line of the tour."""
    text = README.read_text()
    block = text[text.index("## A short tour"):]
    block = block[block.index("```\n") + 4:]
    block = block[:block.index("```")]
    steps: list[tuple[str, str | None]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], None))
        elif line.startswith("error: "):
            steps[-1] = (steps[-1][0], line.split("(…)")[0])
    return steps


def test_the_readme_tour_runs_as_written(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("ARTIFACTSTORE_STORE", None)
    steps = tour()
    assert len(steps) > 20
    for command, error in steps:
        if command.startswith("export "):
            name, _, value = shlex.split(command)[1].partition("=")
            env[name] = value
            continue
        done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=120)
        if error is None:
            assert done.returncode == 0, f"$ {command}\n{done.stdout}\n{done.stderr}"
        else:
            assert done.returncode != 0 and done.stderr.startswith(error), f"$ {command}\n{done.stderr}"
        assert "Traceback" not in done.stderr, f"$ {command}\n{done.stderr}"
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists() and (tmp_path / "psi.png").exists()
