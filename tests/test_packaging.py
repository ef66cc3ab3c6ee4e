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
    wanted = project["dependencies"] + project["optional-dependencies"]["test"]
    assert sorted(pip_lists[0]) == sorted(wanted), (
        "environment.yml pip section and pyproject dependencies + test extra differ: "
        f"{sorted(set(map(_name, pip_lists[0])) ^ set(map(_name, wanted)))}"
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


def _imported_modules(path: Path) -> set[str]:
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_layers_import_only_downwards():
    """Data flows data -> model -> objective -> engine -> eval -> report: the figures never
    import an experiment, and the losses and the training engine do not import each other
    (both use nbfacelib.distributed)."""
    pkg = REPO / "nbfacelib"
    rules = {"viz": ("nbfacelib.experiments",), "losses": ("nbfacelib.train",)}
    for layer, forbidden in rules.items():
        for path in sorted((pkg / layer).rglob("*.py")):
            bad = [m for m in _imported_modules(path) if m.startswith(forbidden)]
            assert not bad, f"{path.relative_to(REPO)} imports {bad}"
    for path in sorted((pkg / "train").rglob("*.py")):
        bad = [m for m in _imported_modules(path) if m == "nbfacelib.losses.partial_fc"]
        assert not bad, f"{path.relative_to(REPO)} imports a specific loss: {bad}"


def test_shipped_data_is_package_data():
    """A wheel carries the data sets shipped in the package (the ORL faces): every file under
    nbfacelib/data/bundled matches a package-data pattern of pyproject.toml."""
    from pathlib import PurePosixPath

    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    package = REPO / "nbfacelib"
    shipped = [p for p in (package / "data" / "bundled").rglob("*") if p.is_file()]
    assert len(shipped) >= 400
    for p in shipped:
        rel = PurePosixPath(p.relative_to(package).as_posix())
        assert any(
            rel.match(pat) and len(rel.parts) == len(PurePosixPath(pat).parts)
            for pat in patterns["nbfacelib"]
        ), rel
