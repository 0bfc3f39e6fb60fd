"""The wheel as a user installs it: one import root, ``passerelle``, and a command that works from anywhere.

The repository keeps its top-level folders (``schemas/``, ``streams/``,
``connectors/``, ``deploy/``); they are linked into ``passerelle/`` and
installed as ``passerelle.schemas`` and so on, so that nothing but
``passerelle`` lands in site-packages, where a ``schemas`` or ``deploy``
package of another distribution would clash with ours.
"""

from __future__ import annotations

import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def run(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel ``pip wheel`` builds from the repository, as a release would."""
    dist = tmp_path_factory.mktemp("dist")
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)], dist)
    assert built.returncode == 0, built.stderr[-3000:]
    [path] = dist.glob("passerelle-*.whl")
    return path


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the wheel installed (not editable); its dependencies come from ours."""
    venv = tmp_path_factory.mktemp("venv")
    made = run([sys.executable, "-m", "venv", "--without-pip", str(venv)], venv)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    done = run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)], venv)
    assert done.returncode == 0, done.stderr[-3000:]
    # Dependencies from the test environment's site-packages: a path in a .pth file is added to sys.path, but
    # the .pth files inside it (our own editable install among them) are not run, so the repository stays out.
    purelib = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], venv)
    (Path(purelib.stdout.strip()) / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return venv


def test_the_wheel_holds_one_top_level_package_and_its_data(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"passerelle", "passerelle-0.1.0.dist-info"}
    for needed in ("passerelle/schemas/catalog.toml", "passerelle/schemas/avro/Hit.avsc",
                   "passerelle/deploy/local/pom.xml", "passerelle/streams/runtime/runner.py",
                   "passerelle/connectors/collector/app.py"):  # fmt: skip
        assert needed in names
    assert not any(n.startswith("passerelle/bench/") for n in names)  # benchmarks stay in the repository


def test_the_installed_command_runs_from_another_directory(installed: Path, tmp_path: Path) -> None:
    passerelle = str(installed / "bin" / "passerelle")
    helped = run([passerelle, "--help"], tmp_path)
    assert helped.returncode == 0, helped.stderr
    assert "enrich" in helped.stdout and "collector" in helped.stdout
    listed = run([passerelle, "topics", "list"], tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "hits.raw" in listed.stdout and "EnrichedHit" in listed.stdout  # the catalog ships in the wheel
    bench = run([passerelle, "bench", "enrich"], tmp_path)
    assert bench.returncode != 0 and "checkout" in bench.stderr and "Traceback" not in bench.stderr


def test_only_passerelle_is_importable_from_the_wheel(installed: Path, tmp_path: Path) -> None:
    python = str(installed / "bin" / "python")
    ours = run([python, "-c", "import passerelle.schemas.catalog, passerelle.streams.runtime, "
                "passerelle.connectors.collector.app, passerelle.deploy.local.stack; "
                "print(passerelle.schemas.catalog.__file__)"], tmp_path)  # fmt: skip
    assert ours.returncode == 0, ours.stderr
    assert str(installed) in ours.stdout and str(ROOT) not in ours.stdout
    for name in ("schemas", "streams", "connectors", "deploy"):
        other = run([python, "-c", f"import {name}"], tmp_path)
        assert other.returncode != 0 and "ModuleNotFoundError" in other.stderr, name
