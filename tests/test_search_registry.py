"""A search is one registry entry: registering one is all it takes to run it, check for it and use it.

docs/design.md, "Where to add": a search against UniProt (the database AlphaFold-Multimer pairs MSAs
with), registered in the test as a plugin would register it, appears in `af2cpu doctor`, `af2cpu db
check` and the stage graph, runs for real with jackhmmer on the bundled mini databases, and its MSA
reaches the features. A changed tool version invalidates a search's result.
"""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest

from af2cpu.cli import main
from af2cpu.config import compose_config
from af2cpu.data import EXAMPLES_DIR
from af2cpu.io import load_features_npz
from af2cpu.layout import TargetDir
from af2cpu.preprocessing import searches, tools
from af2cpu.preprocessing.inputs import read_fasta_targets
from af2cpu.scheduler.stages import StageContext, run_stages, target_stages


def _jackhmmer_uniprot(search: searches.Search, job: searches.SearchJob) -> tools.ToolRun:
    return tools.jackhmmer(job.query, job.databases[0], job.out, job.cpus, job.timeout,
                           max_sequences=search.msa.max_sequences)


UNIPROT = searches.Search(
    "uniprot_plugin", "uniprot_plugin_hits.sto", ("jackhmmer",), ("uniprot",), _jackhmmer_uniprot, tuple(tools.JACKHMMER_FLAGS),
    db_presets=("mini",), msa=searches.MsaUse(3, "uniprot_plugin", max_sequences=50),
)


@pytest.fixture
def uniprot_search():
    searches.register_search(UNIPROT)
    try:
        yield UNIPROT
    finally:
        searches.unregister_search(UNIPROT.name)


def test_a_registered_search_is_in_the_plan_the_stage_graph_and_the_requirements(uniprot_search):
    cfg = compose_config(["params=random"])
    assert searches.plan_searches("mini")[-1] is uniprot_search
    assert uniprot_search not in searches.plan_searches("reduced")
    assert "uniprot" in searches.required_databases("mini") and "jackhmmer" in searches.required_tools("mini")
    stages = {s.name: s for s in target_stages(cfg)}
    assert "search_uniprot_plugin" in stages and "search_uniprot_plugin" in stages["features"].needs
    assert list(stages).index("search_uniprot_plugin") < list(stages).index("features")


def test_a_registered_search_appears_in_doctor_and_db_check(uniprot_search, capsys):
    assert main(["db", "check"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if " uniprot " in line)
    assert line.split()[0] == "ok" and "not used" not in line  # required now, and present
    assert main(["doctor", "params=random"]) == 0
    assert "ok       uniprot" in capsys.readouterr().out


def test_without_the_plugin_uniprot_is_listed_as_multimer_only(capsys):
    assert main(["db", "check"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if " uniprot " in line)
    assert "(multimer only)" in line  # the complexes' pairing search reads it


@pytest.mark.slow
def test_a_registered_search_runs_and_its_msa_reaches_the_features(uniprot_search, tmp_path):
    cfg = compose_config([])
    (target,) = read_fasta_targets(EXAMPLES_DIR / "HBB_HUMAN.fasta")
    folder = TargetDir(tmp_path / target.id)
    folder.claim(target.id, target.description, target.sequence)
    done = run_stages(target_stages(cfg, "features"), StageContext(target, cfg, folder))
    assert not done["search_uniprot_plugin"].cached
    provenance = json.loads((folder.msas / "uniprot_plugin_hits.sto.json").read_text())
    assert provenance["tool"] == "jackhmmer" and provenance["key"]["tools"]["jackhmmer"] == "3.3.2"
    sizes = json.loads(folder.features_report.read_text())["msa_sizes"]
    assert list(sizes) == ["uniref90", "bfd", "mgnify", "uniprot_plugin"] and sizes["uniprot_plugin"] > 1
    assert len(load_features_npz(folder.features)["msa"]) > sizes["uniref90"]
    again = run_stages(target_stages(cfg, "features"), StageContext(target, cfg, folder))
    assert all(timing.cached for timing in again.values())


@pytest.mark.slow
def test_another_tool_version_invalidates_a_search_result(tmp_path, monkeypatch):
    cfg = compose_config([])
    (target,) = read_fasta_targets(EXAMPLES_DIR / "HBB_HUMAN.fasta")
    uniref90 = searches.SEARCHES["uniref90"]
    searches.run_search(uniref90, target, tmp_path, cfg.db, cpus=1)
    assert searches.reusable(uniref90, target.sequence, tmp_path, cfg.db)
    # The same jackhmmer behind a wrapper that reports another HMMER version, as an upgrade would.
    wrapper = tmp_path / "bin" / "jackhmmer"
    wrapper.parent.mkdir()
    real = shutil.which("jackhmmer")
    wrapper.write_text(f'#!/bin/sh\nif [ "$1" = -h ]; then echo "# HMMER 3.4 (Aug 2023)"; exit 0; fi\nexec {real} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("AF2CPU_JACKHMMER", str(wrapper))
    assert not searches.reusable(uniref90, target.sequence, tmp_path, cfg.db)
    before = os.stat(tmp_path / uniref90.output).st_mtime_ns
    searches.run_search(uniref90, target, tmp_path, cfg.db, cpus=1)
    assert os.stat(tmp_path / uniref90.output).st_mtime_ns != before  # searched again
    recorded = json.loads(searches.sidecar(tmp_path / uniref90.output).read_text())
    assert recorded["tool_version"] == "3.4" and searches.reusable(uniref90, target.sequence, tmp_path, cfg.db)
