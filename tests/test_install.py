"""Installing af2cpu: one distribution whose stage folders land as `af2cpu.*` subpackages only.

Each test makes a fresh venv that borrows the already-installed dependencies (torch, numpy, ...)
through a .pth file, then installs this checkout without dependencies, regular or editable.
"""

import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _make_venv(root: Path) -> Path:
    # No pip of its own: the borrowed one (and the borrowed modern setuptools) builds and installs.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    # Borrow the test environment's third-party packages; af2cpu itself is excluded below.
    borrowed = [p for p in {sysconfig.get_paths()["purelib"], *site.getsitepackages()} if Path(p).is_dir()]
    (Path(purelib) / "borrowed_deps.pth").write_text("\n".join(borrowed) + "\n")
    return python


def _run(python: Path, code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-c", code], cwd=cwd, capture_output=True, text=True, check=False)


@pytest.mark.slow
@pytest.mark.parametrize("editable", [False, True], ids=["regular", "editable"])
def test_fresh_install_exposes_only_af2cpu(tmp_path, editable):
    python = _make_venv(tmp_path / "venv")
    args = [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
    args += ["-e", str(REPO)] if editable else [str(REPO)]
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]

    elsewhere = tmp_path / "elsewhere"  # not the repository, so its folders are not on sys.path
    elsewhere.mkdir()
    ok = _run(
        python,
        "import af2cpu, af2cpu.model, af2cpu.preprocessing, af2cpu.relax, af2cpu.scheduler, af2cpu.configs;"
        "import af2cpu.model.primitives, af2cpu.preprocessing.binaries;"
        "from af2cpu.data import MINI_DB_ROOT; from af2cpu.config import compose_config;"
        "print(af2cpu.__file__); print(compose_config([]).db.pdb70)",
        elsewhere,
    )
    assert ok.returncode == 0, ok.stderr
    installed_at = Path(ok.stdout.splitlines()[0])
    assert (installed_at.parent / ".." / "model").resolve() != installed_at.parent
    for bare in ("model", "preprocessing", "relax", "scheduler", "configs"):
        proc = _run(python, f"import {bare}", elsewhere)
        assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr, f"`import {bare}` worked"

    cli = subprocess.run([str(python.parent / "af2cpu"), "--version"], capture_output=True, text=True,
                         check=False)
    assert cli.returncode == 0 and cli.stdout.startswith("af2cpu ")

    if not editable:
        site_dir = installed_at.parent.parent
        top_level = {p.name for p in site_dir.iterdir() if not p.name.endswith((".dist-info", ".pth"))}
        ours = {"model", "preprocessing", "relax", "scheduler", "configs"} & top_level
        assert not ours, f"stage folders leaked into site-packages: {ours}"
        assert (site_dir / "af2cpu" / "configs" / "db" / "full.yaml").is_file()
        assert (site_dir / "af2cpu" / "model" / "primitives.py").is_file()
