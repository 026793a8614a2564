"""The fault suite (issue 18): every kind of file of a finished target folder is damaged in turn —
truncated, overwritten with garbage, or swapped with another target's file — and the rerun must say
so in one line naming the file, recompute only the stages that depend on it, and end with outputs
equal to a clean run's.

One finished output folder (two targets, real tools on the mini databases, random params, real
OpenMM relaxation) is made once per module; each case works on a copy. The stages run in this process
(`run_stages`, as `af2cpu features` runs them) on a variant of model_1_ptm with one Evoformer and one extra-MSA block, the
same network with fewer blocks, to keep inference cheap. Detection is checked for every kind and
every damage (a stage-cache lookup, no rerun); the full rerun for every kind with one damage each,
the three damages spread over the kinds.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from af2cpu.config import compose_config
from af2cpu.io import load_features_npz, load_result_npz
from af2cpu.layout import TargetDir
from af2cpu.model import presets
from af2cpu.preprocessing.inputs import Target
from af2cpu.scheduler.cache import StageCache
from af2cpu.scheduler.stages import StageContext, run_stages, target_stages

CRAMBIN = "TTCCPSIVARSNFNVCRLPGTPEAICATYTGCIIIPGATCPGDYAN"  # 1EJG: no homologs in the mini databases
PEPTIDE = "MQIFVKTLTGKTITLEVEPS"  # ubiquitin's first 20 residues: another target, cheap to run
MODEL = "model_1_ptm"
OVERRIDES = ["params=random", f"model.names=[{MODEL}]", "model.num_recycle=0", "relax=best",
             "relax.max_outer_iterations=1", "relax.max_iterations=50", "runtime.threads=2", "search.cpus=2"]
TARGETS = {"1EJG_A": CRAMBIN, "other": PEPTIDE}

# Every file a stage records (and a record itself), each damaged in all three ways: detected.
FILES = ["msas/uniref90_hits.sto", "msas/uniref90_hits.sto.json", "msas/mgnify_hits.sto", "msas/mgnify_hits.sto.json",
         "msas/bfd_uniref_hits.a3m", "msas/bfd_uniref_hits.a3m.json", "msas/pdb_hits.hhr", "msas/pdb_hits.hhr.json",
         "features.npz", "features_report.json", f"result_{MODEL}.npz", f"confidence_{MODEL}.json",
         f"pae_{MODEL}.json", f"unrelaxed_{MODEL}.pdb", f"relaxed_{MODEL}.pdb", f"relax_report_{MODEL}.json",
         "features.stage.json", f"infer_{MODEL}.stage.json"]
DAMAGES = ("truncate", "garbage", "swap")
# The full rerun, one damage per file (all three spread over the kinds, every stage's outputs once):
# file -> (the stages that must run again, every other recorded stage staying cached; the damage).
# A new HHR differs from the old in its 'Date' line, so the features (keyed by their inputs' hashes)
# are made again; they come out equal, so inference stays cached.
CASES = {
    "msas/uniref90_hits.sto": ({"search_uniref90"}, "truncate"),
    "msas/mgnify_hits.sto": ({"search_mgnify"}, "swap"),
    "msas/bfd_uniref_hits.a3m": ({"search_bfd_uniref"}, "garbage"),
    "msas/pdb_hits.hhr": ({"search_pdb70", "features"}, "swap"),
    "msas/uniref90_hits.sto.json": ({"search_uniref90"}, "garbage"),
    "features.npz": ({"features"}, "truncate"),
    f"result_{MODEL}.npz": ({f"infer_{MODEL}"}, "garbage"),
    f"relaxed_{MODEL}.pdb": ({f"relax_{MODEL}"}, "swap"),
    "features.stage.json": ({"features"}, "garbage"),
}


@pytest.fixture(scope="module")
def few_blocks():
    """model_1_ptm with one Evoformer and one extra-MSA block: the real network, cheap to run."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(presets.PRESETS, MODEL, presets.PRESETS[MODEL].with_blocks(evoformer=1, extra_msa=1))
        yield


def _run(folder: Path, target_id: str) -> dict[str, bool]:
    """Run every stage of one target in this process; {recorded stage: was it cached}."""
    cfg = compose_config(OVERRIDES)
    target = Target(target_id, f"{target_id} test", TARGETS[target_id])
    target_dir = TargetDir(folder)
    target_dir.claim(target.id, target.description, target.sequence)
    done = run_stages(target_stages(cfg), StageContext(target, cfg, target_dir))
    return {timing.name: timing.cached for timing in done.values() if timing.recorded}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, few_blocks):
    root = tmp_path_factory.mktemp("faults")
    for target_id in TARGETS:
        _run(root / target_id, target_id)
    return root


def damage(path: Path, how: str, other: Path) -> None:
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        path.write_bytes(bytes(range(256)) * (1 + len(data) // 256))
    else:
        shutil.copyfile(other, path)
        assert path.read_bytes() != data, f"{other} is no different from {path}"


def _copy(finished: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "1EJG_A"
    shutil.copytree(finished / "1EJG_A", folder)
    return folder


def _owner(folder: Path, name: str) -> str:
    """The stage whose record lists ``name`` (or whose record ``name`` is)."""
    if name.endswith(".stage.json"):
        return TargetDir.stage_of_record(folder / name)
    return next(TargetDir.stage_of_record(p) for p in TargetDir(folder).stage_records()
                if name in json.loads(p.read_text())["outputs"])


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("name", FILES)
def test_every_damage_is_detected_in_one_line(finished, tmp_path, caplog, name, how):
    folder = _copy(finished, tmp_path)
    stage = _owner(folder, name)
    key = json.loads(TargetDir(folder).stage_record(stage).read_text())["key"]
    damage(folder / name, how, finished / "other" / name)
    with caplog.at_level(logging.WARNING):
        assert StageCache(folder).lookup(stage, key) is None
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    if name.endswith(".stage.json") and how == "swap":
        assert not lines  # another target's record: its key is not this target's, so it is simply not used
    else:
        assert len(lines) == 1 and str(folder / name) in lines[0], lines
        assert not TargetDir(folder).stage_record(stage).exists(), "the damaged stage's record was kept"


def _same_outputs(folder: Path, clean: Path) -> None:
    def names(root: Path) -> set[str]:
        return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and ".lock" not in p.name}

    assert names(folder) == names(clean)
    for name in sorted(names(clean)):
        a, b = folder / name, clean / name
        if name.endswith(".stage.json") or name in ("timings.json", "af2cpu.log") or name.startswith("plots/"):
            continue  # times of the runs; figures are redrawn from the compared arrays
        if name.endswith(".hhr"):  # the hits; the header tells when and in which scratch folder it ran
            same = [line for line in a.read_text().splitlines() if not line.startswith(("Date", "Command"))]
            assert same == [line for line in b.read_text().splitlines()
                            if not line.startswith(("Date", "Command"))], name
        elif name.endswith(".json") and name.startswith("msas/"):  # provenance: the same but for the time
            # taken (and an HHR's own hash, whose header differs)
            skip = {"seconds", "size", "sha256"} if name.endswith(".hhr.json") else {"seconds"}
            assert {k: v for k, v in json.loads(a.read_text()).items() if k not in skip} == \
                   {k: v for k, v in json.loads(b.read_text()).items() if k not in skip}, name
        elif name == "features.npz":
            fa, fb = load_features_npz(a), load_features_npz(b)
            assert fa.keys() == fb.keys() and all(np.array_equal(fa[k], fb[k]) for k in fa), name
        elif name.startswith("result_"):
            ra, rb = load_result_npz(a, ["plddt", "structure_module"]), load_result_npz(b, ["plddt", "structure_module"])
            np.testing.assert_allclose(ra["plddt"], rb["plddt"], atol=1e-4)
        elif name.startswith(("relax_report", "relaxed_", "ranked_")):
            continue  # compared below
        else:
            assert a.read_bytes() == b.read_bytes(), name
    # Amber's minimisation of a random network's structure (clashes everywhere) is not reproducible to
    # the digit from run to run, so the relaxed files are compared by their atoms, not coordinates.
    for name in [n for n in names(clean) if n.startswith(("relaxed_", "ranked_"))]:
        if name.endswith(".pdb"):
            assert _atoms(folder / name) == _atoms(clean / name), name
    for name in [n for n in names(clean) if n.startswith("relax_report")]:
        assert json.loads((folder / name).read_text())["relaxed"] == json.loads((clean / name).read_text())["relaxed"]


def _atoms(path: Path) -> list[str]:
    """Atom name, residue name, chain and residue number of each ATOM line."""
    return [line[12:27] for line in path.read_text().splitlines() if line.startswith("ATOM")]


@pytest.mark.parametrize("name", CASES)
def test_a_rerun_recomputes_only_what_depends_on_the_damaged_file(finished, tmp_path, caplog, few_blocks, name):
    expected, how = CASES[name]
    folder = _copy(finished, tmp_path)
    damage(folder / name, how, finished / "other" / name)
    with caplog.at_level(logging.WARNING):
        cached = _run(folder, "1EJG_A")
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and str(folder / name) in warnings[0], warnings
    assert {stage for stage, was_cached in cached.items() if not was_cached} == expected
    _same_outputs(folder, finished / "1EJG_A")
