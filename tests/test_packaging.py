"""The conda environment and pyproject name the same dependencies; the CLI is wired up."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_lists = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_lists) == 1, "environment.yml needs exactly one pip section"
    conda_pkgs = [d for d in env["dependencies"] if isinstance(d, str)]
    assert any(d.startswith("python=3.11") for d in conda_pkgs)
    assert sorted(pip_lists[0]) == sorted(project["dependencies"]), (
        "environment.yml pip section and pyproject dependencies differ: "
        f"{sorted(set(map(_name, pip_lists[0])) ^ set(map(_name, project['dependencies'])))}"
    )


def test_python_m_and_console_script_agree():
    out = subprocess.run(
        [sys.executable, "-m", "nbfacelib", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "usage: nbface" in out


def test_makefile_has_the_readme_commands():
    readme = (REPO / "README.md").read_text()
    makefile = (REPO / "Makefile").read_text()
    for cmd in ("reproduce", "test"):
        assert f"make {cmd}" in readme
        assert re.search(rf"^{cmd}:", makefile, re.M), f"Makefile lacks target {cmd}"
    assert "make test" in (REPO / ".ci" / "run").read_text()
