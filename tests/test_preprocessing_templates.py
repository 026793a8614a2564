"""mmCIF parsing and template featurization on real structures; a bad template costs only itself."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

from af2cpu.common import residue_constants as rc
from af2cpu.preprocessing import parsers, templates
from af2cpu.preprocessing.mmcif import parse_mmcif_text

DATA = Path(__file__).parent / "data" / "preprocessing"
CIF_1A8O = DATA / "mmcif" / "1a8o.cif"


@pytest.fixture(scope="module")
def entry_1a8o():
    result = parse_mmcif_text("1a8o", CIF_1A8O.read_text())
    assert result.error is None
    return result.entry


def test_selenomethionine_reads_as_methionine_with_selenium_in_sd(entry_1a8o):
    seqres = entry_1a8o.chain_to_seqres["A"]
    assert seqres.startswith("MDIRQGPKEPF") and len(seqres) == 70
    assert entry_1a8o.seqres_to_structure["A"][0].name == "MSE"
    positions, mask = templates.chain_atom37(entry_1a8o, "A")
    sd = rc.atom_order["SD"]
    assert mask[0, sd] == 1 and np.linalg.norm(positions[0, sd] - positions[0, rc.atom_order["CG"]]) > 1.8


def test_old_entry_without_revision_history_gets_its_first_release_date(entry_1a8o):
    assert entry_1a8o.release_date == "1998-10-14"
    assert entry_1a8o.header["resolution"] == pytest.approx(1.7)


def test_obsolete_file_maps_ids_to_successors(tmp_path):
    dat = tmp_path / "obsolete.dat"
    dat.write_text(
        " LIST OF OBSOLETE COORDINATE ENTRIES AND SUCCESSORS\n"
        "OBSLTE    14-OCT-98 1AM3     1A8O\n"
        "OBSLTE    21-NOV-03 1HG6\n"
    )
    assert templates.read_obsolete_pdbs(dat) == {"1am3": "1a8o", "1hg6": None}


def _hit(name: str, seqres: str, pad: int = 5) -> tuple[str, parsers.TemplateHit]:
    query = "G" * pad + seqres + "G" * pad
    hit = parsers.TemplateHit(
        index=1, name=name, aligned_cols=len(seqres), sum_probs=50.0, query=seqres, hit_sequence=seqres,
        indices_query=list(range(pad, pad + len(seqres))), indices_hit=list(range(len(seqres))),
    )  # fmt: skip
    return query, hit


def test_unparseable_or_missing_mmcif_costs_only_that_template(tmp_path, entry_1a8o):
    shutil.copy(CIF_1A8O, tmp_path / "1a8o.cif")
    text = CIF_1A8O.read_text()
    (tmp_path / "2abc.cif").write_text(text[: len(text) // 3] + "\nloop_\n_atom_site.broken\n")
    seqres = entry_1a8o.chain_to_seqres["A"]
    query, good = _hit("1a8o_A HIV capsid", seqres)
    broken = dataclasses.replace(good, name="2abc_A broken", sum_probs=90.0)
    missing = dataclasses.replace(good, name="3xyz_A missing", sum_probs=80.0)
    settings = templates.TemplateSettings(mmcif_dir=str(tmp_path), max_template_date="2100-01-01")
    result = templates.featurize_templates(query, [good, broken, missing], settings)
    assert [n.decode() for n in result.features["template_domain_names"]] == ["1a8o_A"]
    reasons = {s.name.split()[0]: s.reason for s in result.skipped}
    assert "2abc" in reasons["2abc_A"] and "cannot parse mmCIF" in reasons["2abc_A"]
    assert "cannot read" in reasons["3xyz_A"]
    features = result.features
    assert features["template_all_atom_positions"].shape == (1, len(query), 37, 3)
    assert features["template_sequence"][0].decode() == "-" * 5 + seqres + "-" * 5
    assert features["template_all_atom_masks"][0, :5].sum() == 0
    assert features["template_all_atom_masks"][0, 5:75, rc.atom_order["CA"]].all()
    assert features["template_sum_probs"].tolist() == [[50.0]]


def test_date_filter_and_alphafold_prefilters(tmp_path, entry_1a8o):
    shutil.copy(CIF_1A8O, tmp_path / "1a8o.cif")
    seqres = entry_1a8o.chain_to_seqres["A"]
    query, hit = _hit("1a8o_A HIV capsid", seqres)
    early = templates.TemplateSettings(mmcif_dir=str(tmp_path), max_template_date="1998-01-01")
    result = templates.featurize_templates(query, [hit], early)
    assert result.features["template_aatype"].shape == (0,)
    assert "released 1998-10-14, after 1998-01-01" in result.skipped[0].reason

    late = templates.TemplateSettings(mmcif_dir=str(tmp_path), max_template_date="2020-01-01")
    duplicate_query, duplicate = _hit("1a8o_A", seqres, pad=0)
    assert (
        "exact subsequence"
        in templates.featurize_templates(duplicate_query, [duplicate], late).skipped[0].reason
    )
    short_query, short = _hit("1a8o_A", seqres[:9], pad=1)
    assert "too short" in templates.featurize_templates(short_query, [short], late).skipped[0].reason


def test_only_max_hits_templates_are_kept_best_first(tmp_path, entry_1a8o):
    shutil.copy(CIF_1A8O, tmp_path / "1a8o.cif")
    query, hit = _hit("1a8o_A", entry_1a8o.chain_to_seqres["A"])
    hits = [dataclasses.replace(hit, sum_probs=float(p), index=i) for i, p in enumerate(range(25))]
    settings = templates.TemplateSettings(mmcif_dir=str(tmp_path), max_template_date="2100-01-01")
    result = templates.featurize_templates(query, hits, settings)
    assert result.features["template_sum_probs"][:, 0].tolist() == [float(p) for p in range(24, 4, -1)]


@pytest.mark.reference
@pytest.mark.parametrize("pdb_id", ["4cup", "1gbt", "2gtl", "1a7g"])
def test_mmcif_chains_and_atoms_equal_reference(pdb_id):
    """Alternate locations (4cup), insertion codes (1gbt), many chains (2gtl), as AlphaFold2 reads them."""
    ref_mmcif = pytest.importorskip("alphafold.data.mmcif_parsing")
    ref_templates = pytest.importorskip("alphafold.data.templates")
    from af2cpu.data import DATA_DIR

    text = (DATA_DIR / "mini" / "pdb_mmcif" / "mmcif_files" / f"{pdb_id}.cif").read_text()
    expected = ref_mmcif.parse(file_id=pdb_id, mmcif_string=text).mmcif_object
    entry = parse_mmcif_text(pdb_id, text).entry
    assert dict(entry.chain_to_seqres) == dict(expected.chain_to_seqres)
    if "release_date" in expected.header:  # the reference has none for old files (4cup)
        assert entry.release_date == expected.header["release_date"]
    for chain_id in expected.chain_to_seqres:
        ref_positions, ref_mask = ref_templates._get_atom_positions(
            expected, chain_id, max_ca_ca_distance=150.0
        )
        positions, mask = templates.chain_atom37(entry, chain_id)
        np.testing.assert_array_equal(positions, ref_positions)
        np.testing.assert_array_equal(mask, ref_mask)
