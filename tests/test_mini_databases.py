"""The bundled mini databases: real tools on real data, with AlphaFold2's own flags.

Every search here runs the real binary (HMMER, HH-suite) on the files under af2cpu/data/mini, as
`db=mini` resolves them, and checks what the rest of af2cpu relies on: HBB_HUMAN has hundreds of
homologues in UniRef90, its MSA finds the 2gtl globin chains in PDB70, hhblits finds globins in
BFD + UniRef30, the no-homolog example finds nothing anywhere, and the files have the official
layout and formats. Which PDB70 entry serves which template case is in af2cpu/data/NOTICE.md.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from af2cpu.config import compose_config
from af2cpu.data import EXAMPLES_DIR, MINI_DB_ROOT
from af2cpu.databases import database_problem

CPUS = "2"
# AlphaFold2's flags (alphafold/data/tools/{jackhmmer,hhblits,hhsearch}.py), with explicit CPU counts.
JACKHMMER_FLAGS = f"--noali --F1 0.0005 --F2 0.00005 --F3 0.0000005 --incE 0.0001 -E 0.0001 --cpu {CPUS} -N 1"
HHBLITS_FLAGS = (
    f"-n 3 -e 0.001 -maxseq 1000000 -realign_max 100000 -maxfilt 100000 -min_prefilter_hits 1000 -cpu {CPUS}"
)
OBSLTE_LINE = r"OBSLTE    \d\d-[A-Z]{3}-\d\d [0-9A-Z]{4}(     [0-9A-Z]{4}( [0-9A-Z]{4})*)?"
GLOBIN_NAME = re.compile(r"^(GLB|GLP|HB|MYG|LGB|BAHG|HBF|GLOB)", re.IGNORECASE)
HBB = EXAMPLES_DIR / "HBB_HUMAN.fasta"
NO_HOMOLOGS = EXAMPLES_DIR / "no_homologs.fasta"


def _need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"not installed: {missing}")


def _run(*argv: str) -> None:
    subprocess.run(list(argv), check=True, capture_output=True)


def _jackhmmer(query: Path, database: str, out: Path) -> list[str]:
    """Names of the sequences in jackhmmer's Stockholm output (the query first)."""
    _run("jackhmmer", "-o", "/dev/null", "-A", str(out), *JACKHMMER_FLAGS.split(), str(query), database)
    return [line.split()[1] for line in out.read_text().splitlines() if line.startswith("#=GS ")]


def _hhblits(query: Path, db, out_dir: Path) -> tuple[Path, Path]:
    a3m, hhr = out_dir / "bfd_uniref_hits.a3m", out_dir / "bfd_uniref_hits.hhr"
    databases = ["-d", db.bfd, "-d", db.uniref30]
    _run("hhblits", "-i", str(query), "-o", str(hhr), "-oa3m", str(a3m), *HHBLITS_FLAGS.split(), *databases)
    return a3m, hhr


def _hhsearch(query: Path, db, hhr: Path) -> Path:
    _run("hhsearch", "-i", str(query), "-o", str(hhr), "-maxseq", "1000000", "-d", db.pdb70, "-cpu", CPUS)
    return hhr


def _stockholm_to_a3m(sto: Path) -> str:
    """Minimal Stockholm -> A3M: the first row's non-gap columns are match states."""
    rows: dict[str, str] = {}
    for line in sto.read_text().splitlines():
        if line.strip() and not line.startswith(("#", "//")):
            name, aligned = line.split()
            rows[name] = rows.get(name, "") + aligned
    names = list(rows)
    match = [c not in "-." for c in rows[names[0]]]
    out = []
    for name in names:
        seq = "".join(
            ("-" if c in "-." else c.upper()) if m else ("" if c in "-." else c.lower())
            for c, m in zip(rows[name], match)
        )
        out.append(f">{name}\n{seq}\n")
    return "".join(out)


def _hhr_summary(hhr: Path) -> list[tuple[str, float]]:
    """(hit name, probability) of each row of an HHR summary table."""
    hits = []
    in_table = False
    for line in hhr.read_text().splitlines():
        if line.startswith(" No Hit"):
            in_table = True
        elif in_table:
            if not line.strip():
                break
            # "  1 2gtl_C Extracellular globin-3  100.0 3.4E-46 ...": number, a 30-character hit
            # column, then the probability.
            hits.append((line[:34].split()[1], float(line[35:40])))
    return hits


def _first_release(cif: Path) -> str | None:
    """Earliest _pdbx_audit_revision_history.revision_date of an mmCIF (a loop or single values)."""
    lines = cif.read_text().splitlines()
    prefix = "_pdbx_audit_revision_history."
    for i, line in enumerate(lines):
        if line.startswith(prefix + "revision_date") and len(line.split()) > 1:
            return line.split()[1]
        if line.startswith(prefix) and lines[i - 1].strip() == "loop_":
            columns = []
            j = i
            while lines[j].startswith(prefix):
                columns.append(lines[j].split()[0][len(prefix) :])
                j += 1
            dates = []
            while j < len(lines) and not lines[j].startswith(("#", "_", "loop_")):
                dates.append(shlex.split(lines[j])[columns.index("revision_date")])
                j += 1
            return min(dates)
    return None


def _ffindex_keys(index: Path) -> list[bytes]:
    return [line.split(b"\t")[0] for line in index.read_bytes().splitlines()]


@pytest.fixture(scope="module")
def db():
    cfg = compose_config([])
    assert Path(cfg.db.root) == MINI_DB_ROOT
    return cfg.db


# ----------------------------------------------------------------------------- layout and formats


def test_every_configured_path_exists(db):
    for key in ("uniref90", "mgnify", "small_bfd", "uniprot", "obsolete_pdbs", "pdb_seqres"):
        path = Path(db[key])
        assert path.is_file() and path.stat().st_size > 0, key
    parts = {"bfd": ("a3m", "cs219"), "uniref30": ("a3m", "cs219"), "pdb70": ("a3m", "hhm", "cs219")}
    for key, suffixes in parts.items():
        for suffix in suffixes:
            for ext in ("ffdata", "ffindex"):
                assert Path(f"{db[key]}_{suffix}.{ext}").is_file(), (key, suffix, ext)
    assert sorted(Path(db.template_mmcif_dir).glob("*.cif"))
    for key in ("colabfold_uniref30", "colabfold_envdb", "uniprot_mmseqs"):  # MMseqs2 databases, unindexed
        assert database_problem(key, str(db[key]), require_index=False) == "", key
    for example in (HBB, EXAMPLES_DIR / "ubiquitin.fasta", NO_HOMOLOGS):
        assert example.read_text().startswith(">")


def test_bundled_set_is_small():
    total = sum(p.stat().st_size for p in MINI_DB_ROOT.rglob("*") if p.is_file())
    assert total < 12 * 2**20, total


def test_ffindex_indexes_are_bytewise_sorted_and_consistent():
    indexes = sorted(MINI_DB_ROOT.rglob("*.ffindex"))
    assert len(indexes) == 7
    for index in indexes:
        keys = _ffindex_keys(index)
        assert keys, index
        assert keys == sorted(keys), f"{index} is not sorted bytewise (LC_ALL=C)"
        assert len(set(keys)) == len(keys), index
        data_size = index.with_suffix(".ffdata").stat().st_size
        for line in index.read_bytes().splitlines():
            _, offset, length = line.split(b"\t")
            assert int(offset) + int(length) <= data_size, (index, line)
    for prefix in {str(i)[: str(i).rfind("_")] for i in indexes}:
        a3m = _ffindex_keys(Path(f"{prefix}_a3m.ffindex"))
        assert _ffindex_keys(Path(f"{prefix}_cs219.ffindex")) == a3m, prefix


def test_pdb_seqres_obsolete_and_mmcif_files_agree(db):
    mmcif_ids = {p.stem for p in Path(db.template_mmcif_dir).glob("*.cif")}
    header = re.compile(r"^>(\w{4})_(\w+) mol:(protein|na) length:(\d+)  (.*)$")
    lines = Path(db.pdb_seqres).read_text().splitlines()
    assert len(lines) % 2 == 0
    for title, seq in zip(lines[::2], lines[1::2]):
        m = header.match(title)
        assert m, title
        assert m.group(1) in mmcif_ids
        assert int(m.group(4)) == len(seq) and re.fullmatch(r"[A-Z]+", seq), title
    assert ">2gtl_A mol:protein length:151  EXTRACELLULAR GLOBIN 4" in lines

    obsolete = {}
    for line in Path(db.obsolete_pdbs).read_text().splitlines():
        if line.startswith("OBSLTE"):
            assert re.fullmatch(OBSLTE_LINE, line), line
            obsolete[line[20:24].lower()] = line[29:33].lower() or None
    assert obsolete["1am3"] == "1a8o" and "1a8o" in mmcif_ids


def test_pdb70_entries_cover_the_template_cases(db):
    data = Path(f"{db.pdb70}_a3m.ffdata").read_bytes()
    first = {}
    for line in Path(f"{db.pdb70}_a3m.ffindex").read_text().splitlines():
        key, offset, length = line.split("\t")
        entry = data[int(offset) : int(offset) + int(length)].rstrip(b"\0").decode().splitlines()
        assert entry[0].split()[0] == ">" + key
        first[key] = entry[1].replace("-", "")
    lines = Path(db.pdb_seqres).read_text().splitlines()
    seqres = {title[1:].split()[0]: seq for title, seq in zip(lines[::2], lines[1::2])}
    mmcif_dir = Path(db.template_mmcif_dir)
    for key in first:
        pdb_id = "1a8o" if key.startswith("1am3") else key[:4]
        assert (mmcif_dir / f"{pdb_id}.cif").is_file(), key
    # realignment: PDB70's 2gtl_D is Swiss-Prot GLB1_LUMTE, not the mmCIF's chain D SEQRES
    assert first["2gtl_D"] not in seqres["2gtl_D"]
    # every other record is its chain's SEQRES (1am3_A: the SEQRES of its successor 1a8o)
    for key, seq in first.items():
        if key != "2gtl_D":
            assert seq == seqres["1a8o_A" if key == "1am3_A" else key], key
    # release dates for the max_template_date filter
    assert _first_release(mmcif_dir / "2gtl.cif") == "2006-07-18"
    assert _first_release(mmcif_dir / "2xhe.cif") == "2011-06-29"
    assert _first_release(mmcif_dir / "1ubi.cif") == "1994-05-31"
    assert _first_release(mmcif_dir / "1a8o.cif") is None  # old file: _database_PDB_rev only


# ----------------------------------------------------------------------------- searches


@pytest.fixture(scope="module")
def hbb_uniref90(db, tmp_path_factory):
    _need("jackhmmer")
    out = tmp_path_factory.mktemp("hbb") / "uniref90_hits.sto"
    return out, _jackhmmer(HBB, db.uniref90, out)


@pytest.fixture(scope="module")
def hbb_pdb70_hhr(db, hbb_uniref90, tmp_path_factory):
    _need("hhsearch")
    tmp = tmp_path_factory.mktemp("hbb_pdb70")
    a3m = tmp / "query.a3m"
    a3m.write_text(_stockholm_to_a3m(hbb_uniref90[0]))
    return _hhsearch(a3m, db, tmp / "pdb_hits.hhr")


def test_jackhmmer_hbb_finds_hundreds_of_globins_in_uniref90(hbb_uniref90):
    _, names = hbb_uniref90
    assert len(names) >= 500
    assert names[0] == "HBB_HUMAN"  # jackhmmer puts the query first


def test_jackhmmer_hbb_finds_globins_in_mgnify(db, tmp_path):
    _need("jackhmmer")
    assert 20 <= len(_jackhmmer(HBB, db.mgnify, tmp_path / "mgnify_hits.sto")) < 500


def test_hhsearch_of_hbb_msa_ranks_2gtl_first(hbb_pdb70_hhr):
    hits = _hhr_summary(hbb_pdb70_hhr)
    top = hits[:4]
    assert sorted(name for name, _ in top) == ["2gtl_A", "2gtl_B", "2gtl_C", "2gtl_D"]
    assert all(prob >= 95 for _, prob in top)
    assert all(prob < 50 for _, prob in hits[4:])


def test_hhblits_hbb_finds_globins_in_bfd_and_uniref30(db, tmp_path):
    _need("hhblits")
    a3m, hhr = _hhblits(HBB, db, tmp_path)
    hits = [(name, prob) for name, prob in _hhr_summary(hhr) if prob >= 95]
    assert len(hits) >= 10
    assert all(GLOBIN_NAME.match(name) for name, _ in hits), hits
    assert a3m.read_text().count(">") >= 100


def test_hhsearch_of_ubiquitin_finds_1ubi(db, tmp_path):
    _need("jackhmmer", "hhsearch")
    sto = tmp_path / "ubi.sto"
    assert len(_jackhmmer(EXAMPLES_DIR / "ubiquitin.fasta", db.uniref90, sto)) >= 2
    a3m = tmp_path / "ubi.a3m"
    a3m.write_text(_stockholm_to_a3m(sto))
    name, prob = _hhr_summary(_hhsearch(a3m, db, tmp_path / "ubi.hhr"))[0]
    assert name == "1ubi_A" and prob >= 95


def _no_homolog_query() -> tuple[str, str]:
    """(name, sequence) of the no-homolog example."""
    lines = NO_HOMOLOGS.read_text().splitlines()
    return lines[0][1:].split()[0], "".join(lines[1:])


@pytest.mark.parametrize("key", ["uniref90", "mgnify", "small_bfd", "uniprot"])
def test_no_homologs_example_finds_nothing_with_jackhmmer(db, key, tmp_path):
    _need("jackhmmer")
    name, _ = _no_homolog_query()
    assert _jackhmmer(NO_HOMOLOGS, db[key], tmp_path / "hits.sto") == [name]  # the query alone


def test_no_homologs_example_finds_nothing_with_hh_suite(db, tmp_path):
    _need("hhblits", "hhsearch")
    a3m, hhr = _hhblits(NO_HOMOLOGS, db, tmp_path)
    assert a3m.read_text().count(">") == 1
    assert all(prob < 20 for _, prob in _hhr_summary(hhr))
    # hhsearch always lists its best hits, however improbable: for this long query every one is a
    # short chance alignment that AlphaFold2's template filter rejects (aligned/query <= 0.1).
    pdb70_hhr = _hhsearch(NO_HOMOLOGS, db, tmp_path / "pdb70.hhr")
    assert all(prob < 20 for _, prob in _hhr_summary(pdb70_hhr))
    table = pdb70_hhr.read_text().split(" No Hit", 1)[1].split("\n\n")[0].splitlines()[1:]
    cols = [int(re.search(r"\s(\d+)\s+\d+-\d+\s+\d+-\d+\s*\(\s*\d+\)\s*$", line).group(1)) for line in table]
    _, sequence = _no_homolog_query()
    assert cols and all(c / len(sequence) <= 0.1 for c in cols), cols


@pytest.mark.reference
def test_alphafold_template_featurizer_meets_the_designed_cases(db, hbb_pdb70_hhr):
    """AlphaFold2's own featurizer on HBB's PDB70 hits: 2gtl_D is realigned with kalign, a
    max_template_date before 2gtl's release (2006-07-18) drops every 2gtl chain, one before 2xhe's
    (2011-06-29) keeps 2gtl and drops 2xhe."""
    ref_templates = pytest.importorskip("alphafold.data.templates")
    ref_parsers = pytest.importorskip("alphafold.data.parsers")
    _need("kalign")
    sequence = "".join(HBB.read_text().splitlines()[1:])
    # ColabFold's packaging of AlphaFold2 lacks its coverage prefilter (aligned/query > 0.1): apply
    # it, which also keeps out 1am3/4cup (old mmCIFs without a release date AlphaFold2 can read).
    hits = ref_parsers.parse_hhr(hbb_pdb70_hhr.read_text())
    hits = [h for h in hits if h.aligned_cols / len(sequence) > 0.1]
    found = {}
    for date in ("2100-01-01", "2010-01-01", "2006-01-01"):
        featurizer = ref_templates.HhsearchHitFeaturizer(
            mmcif_dir=db.template_mmcif_dir,
            max_template_date=date,
            max_hits=20,
            kalign_binary_path=shutil.which("kalign"),
            release_dates_path=None,
            obsolete_pdbs_path=db.obsolete_pdbs,
        )
        result = featurizer.get_templates(sequence, hits)
        assert not result.errors, result.errors
        found[date] = ({n.decode() for n in result.features["template_domain_names"]}, result.warnings)
    globins = {"2gtl_A", "2gtl_B", "2gtl_C", "2gtl_D"}
    names, warnings = found["2100-01-01"]
    assert globins <= names and any(n.startswith("2xhe") for n in names)
    assert any("not found in 2gtl_D" in w and "Realigning" in w for w in warnings)
    names, _ = found["2010-01-01"]
    assert globins <= names and not any(n.startswith("2xhe") for n in names)
    assert found["2006-01-01"][0] == set()
