"""`af2cpu doctor` and `af2cpu db check` on the real tools and the bundled mini databases."""

import os
import shutil
import subprocess
import sys

import pytest

from af2cpu.data import MINI_DB_ROOT


def af2cpu(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "af2cpu", *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


@pytest.fixture(scope="module")
def mini_copy(tmp_path_factory):
    root = tmp_path_factory.mktemp("db") / "mini"
    shutil.copytree(MINI_DB_ROOT, root)
    return root


def test_doctor_finds_tools_and_mini_databases():
    proc = af2cpu("doctor", "params=random")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for tool in ("jackhmmer", "hhblits", "hhsearch", "hmmsearch", "hmmbuild", "kalign"):
        assert f"ok       {tool}" in out
    assert "3.3.2" in out and "3.3.0" in out  # HMMER and HH-suite versions were read
    for db in ("uniref90", "mgnify", "bfd", "uniref30", "pdb70", "template_mmcif_dir", "obsolete_pdbs"):
        assert f"ok       {db}" in out
    assert f"usable cores: {len(os.sched_getaffinity(0))}" in out
    assert "avx512_bf16" in out and "amx_bf16" in out
    assert "attention: runtime.attention=auto" in out and "head size 32" in out
    assert "element-wise (layer norms, gates): runtime.elementwise=auto" in out
    assert "ready for `af2cpu predict`" in out


def test_doctor_names_a_removed_database_file_and_fails(mini_copy):
    victim = mini_copy / "pdb70" / "pdb70_hhm.ffindex"
    victim.unlink()
    try:
        proc = af2cpu("doctor", "params=random", f"db.root={mini_copy}")
        assert proc.returncode == 1
        assert str(victim) in proc.stdout
        assert "NOT READY" in proc.stdout
        check = af2cpu("db", "check", f"db.root={mini_copy}")
        assert check.returncode == 1 and str(victim) in check.stdout and "pdb70" in check.stdout
    finally:
        shutil.copy(MINI_DB_ROOT / "pdb70" / "pdb70_hhm.ffindex", victim)
    assert af2cpu("db", "check", f"db.root={mini_copy}").returncode == 0


def test_doctor_says_how_to_install_missing_tools(tmp_path):
    bare_path = tmp_path / "bin"
    bare_path.mkdir()
    os.symlink(sys.executable, bare_path / "python")
    env = {**os.environ, "PATH": str(bare_path)}
    env.pop("AF2CPU_JACKHMMER", None)
    proc = af2cpu("doctor", "params=random", env=env)
    assert proc.returncode == 1
    assert "jackhmmer was not found" in proc.stdout
    assert "apt-get install hmmer" in proc.stdout and "apt-get install hhsuite" in proc.stdout


def test_doctor_reports_missing_params_with_the_fix(tmp_path):
    proc = af2cpu("doctor", f"params_dir={tmp_path}", "model.names=[model_1_ptm]",
                  "model.multimer_names=[model_1_multimer_v2]")
    assert proc.returncode == 1
    assert str(tmp_path / "params_model_1_ptm.npz") in proc.stdout
    assert "af2cpu params download" in proc.stdout
    # A multimer v2 file is not in that download: the fix names DeepMind's tarball and where to put it.
    assert "alphafold_params_2022-03-02.tar" in proc.stdout
    assert f"put it at {tmp_path / 'params_model_1_multimer_v2.npz'}" in proc.stdout


def test_unknown_config_key_on_the_command_line_is_a_clear_error():
    proc = af2cpu("doctor", "runtime.thread=4")
    assert proc.returncode == 2
    assert "runtime.thread" in proc.stderr and "runtime.threads" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_db_check_of_a_missing_root_names_the_files(tmp_path):
    proc = af2cpu("db", "check", "db=full", f"db.root={tmp_path / 'nowhere'}")
    assert proc.returncode == 1
    assert str(tmp_path / "nowhere" / "uniref90" / "uniref90.fasta") in proc.stdout
    assert "download_all_data.sh" in proc.stdout


def test_version_flag():
    proc = af2cpu("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("af2cpu 0.")
