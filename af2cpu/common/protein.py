"""The Protein type: a structure in AlphaFold2's atom37 representation, read from PDB, written to PDB/mmCIF.

Every stage that reads or writes coordinates goes through :class:`Protein` so that the network's
output, the relaxer and the output folder agree on atom order and file layout. The PDB text written
by :func:`to_pdb` is column-for-column the text AlphaFold2 writes for the same arrays, so tools that
read AlphaFold2's ``unrelaxed_*.pdb`` read ours.

Conventions (AlphaFold2's):
  * ``atom_positions[i, j]`` is atom ``residue_constants.atom_types[j]`` of residue ``i``, in Å;
  * ``aatype`` indexes ``residue_constants.restypes`` with 20 meaning unknown (UNK);
  * ``residue_index`` holds the residue numbers written to the file (usually 1-based);
  * ``chain_index`` is 0-based and written as the chain letters ``A, B, ...`` of :data:`PDB_CHAIN_IDS`;
  * ``b_factors`` is per atom; predictions carry pLDDT there, the same value on every atom of a residue.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

import numpy as np

from af2cpu.common import residue_constants as rc
from af2cpu.errors import InputError

# Chain letters the PDB format can hold, in the order chain_index maps onto them.
PDB_CHAIN_IDS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
PDB_MAX_CHAINS = len(PDB_CHAIN_IDS)  # 62

# Residue names read as an amino acid although their records differ from the standard residue.
# Selenomethionine is MET with Se in place of S (AlphaFold2's template code reads it so too).
MODIFIED_RESIDUES = {"MSE": "MET"}
_MODIFIED_ATOMS = {("MSE", "SE"): "SD"}

WATER_NAMES = frozenset({"HOH", "WAT", "DOD", "H2O"})


@dataclasses.dataclass(frozen=True, eq=False)
class Protein:
    """A protein structure in the atom37 representation (see the module docstring for conventions)."""

    atom_positions: np.ndarray  # (L, 37, 3) float, Å
    aatype: np.ndarray  # (L,) int, 0..20
    atom_mask: np.ndarray  # (L, 37) float, 1.0 where the atom is present
    residue_index: np.ndarray  # (L,) int, residue numbers
    chain_index: np.ndarray  # (L,) int, 0-based chain of each residue
    b_factors: np.ndarray  # (L, 37) float

    def __post_init__(self):
        num_res = np.shape(self.aatype)[0] if np.ndim(self.aatype) == 1 else None
        if num_res is None:
            raise ValueError(f"aatype must be 1-D, got shape {np.shape(self.aatype)}")
        expected = {
            "atom_positions": (num_res, rc.atom_type_num, 3),
            "atom_mask": (num_res, rc.atom_type_num),
            "residue_index": (num_res,),
            "chain_index": (num_res,),
            "b_factors": (num_res, rc.atom_type_num),
        }
        for name, shape in expected.items():
            if np.shape(getattr(self, name)) != shape:
                raise ValueError(f"{name} has shape {np.shape(getattr(self, name))}, expected {shape}")
        if num_res and (np.min(self.aatype) < 0 or np.max(self.aatype) > rc.restype_num):
            raise ValueError(f"aatype values must lie in 0..{rc.restype_num}")
        if num_res and len(np.unique(self.chain_index)) > PDB_MAX_CHAINS:
            raise ValueError(f"a Protein holds at most {PDB_MAX_CHAINS} chains (the PDB format's limit)")

    @property
    def num_residues(self) -> int:
        return int(self.aatype.shape[0])

    def sequence(self) -> str:
        """One-letter sequence of all residues, chains concatenated (X for unknown)."""
        return "".join(rc.restypes_with_x[a] for a in self.aatype)


@dataclasses.dataclass(frozen=True)
class ParsedPdb:
    """What :func:`parse_pdb` read: the protein and what the atom37 arrays cannot hold."""

    protein: Protein
    residue_names: list[str]  # the file's residue name of each residue (e.g. "MSE", "XYZ")
    chain_ids: list[str]  # the file's chain letter of each chain_index
    skipped_heterogens: list[str]  # "HOH A 101"-style labels of HETATM groups that were not read
    # (name, chain, number) of ATOM-record residues left out for having no atom37 atom (e.g. nucleotides)
    dropped_residues: list[tuple[str, str, int]] = dataclasses.field(default_factory=list)


def residue_label(resname: str, chain_id: str, number: int, icode: str = "") -> str:
    """How errors and reports name a residue: ``"GLY 42 of chain A"``."""
    return f"{resname} {number}{icode.strip()} of chain {chain_id or '(blank)'}"


# --------------------------------------------------------------------------------------------------
# PDB reading


def _pdb_float(line: str, start: int, end: int, what: str, lineno: int, default: float | None = None):
    field = line[start:end].strip()
    if not field and default is not None:
        return default
    try:
        return float(field)
    except ValueError:
        raise InputError(f"PDB line {lineno}: cannot read the {what} from {line.rstrip()!r}") from None


def parse_pdb(pdb_text: str, chain_id: str | None = None) -> ParsedPdb:
    """Read the protein residues of a PDB file's first model.

    Read: ATOM records, and HETATM records of amino acids or known modified amino acids
    (selenomethionine becomes MET). Skipped and listed: other HETATM groups (water, ligands, ions).
    Residues named in ATOM records that are not one of the 20 amino acids become unknown (aatype
    20), as in AlphaFold2. Hydrogens and atoms outside atom37 are ignored; of alternative locations
    the one with the highest occupancy is kept (the first on ties). Residues without any atom37
    atom are dropped, as AlphaFold2 does, and listed in ``dropped_residues``.

    Raises InputError for text without atoms, several models, insertion codes and unreadable
    coordinates, naming the line or residue.
    """
    # (chain, resseq, icode) -> {"name", "atoms": {atom: (occupancy, xyz, b)}}
    residues: OrderedDict[tuple[str, int, str], dict] = OrderedDict()
    heterogens: OrderedDict[str, None] = OrderedDict()
    models_seen = 0
    in_first_model = True
    for lineno, line in enumerate(pdb_text.splitlines(), start=1):
        record = line[:6].strip()
        if record == "MODEL":
            models_seen += 1
            if models_seen > 1:
                raise InputError(
                    "the PDB text holds several models (an NMR ensemble?); only single-model structures "
                    "are supported: extract one model first"
                )
            continue
        if record == "ENDMDL":
            in_first_model = False
            continue
        if record not in ("ATOM", "HETATM") or not in_first_model:
            if record in ("ATOM", "HETATM") and not in_first_model:
                raise InputError(
                    "the PDB text holds atoms after ENDMDL (several models?); only single-model "
                    "structures are supported: extract one model first"
                )
            continue
        if len(line) < 54:
            raise InputError(f"PDB line {lineno} is too short for an atom record: {line.rstrip()!r}")
        atom_name = line[12:16].strip()
        resname = line[17:20].strip()
        chain = line[21]
        if chain_id is not None and chain != chain_id:
            continue
        try:
            resseq = int(line[22:26])
        except ValueError:
            raise InputError(
                f"PDB line {lineno}: cannot read the residue number from {line.rstrip()!r}"
            ) from None
        icode = line[26]
        std_name = MODIFIED_RESIDUES.get(resname, resname)
        if record == "HETATM" and std_name not in rc.restype_3to1:
            heterogens[f"{resname} {chain.strip() or '-'} {resseq}{icode.strip()}"] = None
            continue
        if icode.strip():
            raise InputError(
                f"residue {residue_label(resname, chain, resseq, icode)} has an insertion code; "
                "insertion codes are not supported (as in AlphaFold2): renumber the residues"
            )
        xyz = np.array(
            [_pdb_float(line, s, s + 8, "coordinates", lineno) for s in (30, 38, 46)], dtype=np.float64
        )
        occupancy = _pdb_float(line, 54, 60, "occupancy", lineno, default=1.0)
        b_factor = _pdb_float(line, 60, 66, "B-factor", lineno, default=0.0)
        atom_name = _MODIFIED_ATOMS.get((resname, atom_name), atom_name)
        residue = residues.setdefault((chain, resseq, icode), {"name": resname, "atoms": {}})
        if residue["name"] != resname:
            raise InputError(
                f"residue {resseq} of chain {chain} is named both {residue['name']} and {resname} "
                "(a microheterogeneity?); keep one of them"
            )
        if atom_name not in rc.atom_order:
            continue
        previous = residue["atoms"].get(atom_name)
        if previous is None or occupancy > previous[0]:
            residue["atoms"][atom_name] = (occupancy, xyz, b_factor)

    chain_order: OrderedDict[str, int] = OrderedDict()
    positions, mask, aatype, resindex, chains, b_factors, names = [], [], [], [], [], [], []
    dropped = []
    for (chain, resseq, _), residue in residues.items():
        if not residue["atoms"]:
            dropped.append((residue["name"], chain, resseq))
            continue
        pos = np.zeros((rc.atom_type_num, 3))
        res_mask = np.zeros((rc.atom_type_num,))
        res_b = np.zeros((rc.atom_type_num,))
        for atom_name, (_, xyz, b_factor) in residue["atoms"].items():
            j = rc.atom_order[atom_name]
            pos[j], res_mask[j], res_b[j] = xyz, 1.0, b_factor
        one_letter = rc.restype_3to1.get(MODIFIED_RESIDUES.get(residue["name"], residue["name"]), "X")
        positions.append(pos)
        mask.append(res_mask)
        b_factors.append(res_b)
        aatype.append(rc.restype_order_with_x[one_letter])
        resindex.append(resseq)
        chains.append(chain_order.setdefault(chain, len(chain_order)))
        names.append(residue["name"])
    if not aatype:
        where = f" in chain {chain_id}" if chain_id is not None else ""
        raise InputError(f"the PDB text has no protein atoms{where} (no ATOM records of amino acids)")
    if len(chain_order) > PDB_MAX_CHAINS:
        raise InputError(
            f"the PDB text has {len(chain_order)} chains; at most {PDB_MAX_CHAINS} are supported"
        )
    prot = Protein(
        atom_positions=np.array(positions),
        aatype=np.array(aatype, dtype=np.int32),
        atom_mask=np.array(mask),
        residue_index=np.array(resindex, dtype=np.int32),
        chain_index=np.array(chains, dtype=np.int32),
        b_factors=np.array(b_factors),
    )
    return ParsedPdb(
        protein=prot,
        residue_names=names,
        chain_ids=list(chain_order),
        skipped_heterogens=list(heterogens),
        dropped_residues=dropped,
    )


def from_pdb_string(pdb_text: str, chain_id: str | None = None) -> Protein:
    """The Protein of a PDB file's first model (see :func:`parse_pdb` for what is read)."""
    return parse_pdb(pdb_text, chain_id).protein


# --------------------------------------------------------------------------------------------------
# PDB writing


def format_atom_line(
    serial: int,
    atom_name: str,
    resname: str,
    chain_id: str,
    residue_number: int,
    xyz,
    b_factor: float,
    element: str,
    occupancy: float = 1.0,
    record: str = "ATOM",
) -> str:
    """One ATOM/HETATM record in the PDB's fixed columns (80 characters)."""
    # Names of four characters start in column 13, shorter ones in column 14 (PDB convention).
    name = atom_name if len(atom_name) == 4 else f" {atom_name}"
    line = (
        f"{record:<6}{serial:>5} {name:<4} {resname:>3} {chain_id:>1}{residue_number:>4}    "
        f"{xyz[0]:>8.3f}{xyz[1]:>8.3f}{xyz[2]:>8.3f}{occupancy:>6.2f}{b_factor:>6.2f}          "
        f"{element:>2}  "
    )
    return line.ljust(80)


def format_ter_line(serial: int, resname: str, chain_id: str, residue_number: int) -> str:
    """The TER record that closes a chain."""
    return f"{'TER':<6}{serial:>5}      {resname:>3} {chain_id:>1}{residue_number:>4}".ljust(80)


def _chain_letters(chain_index: np.ndarray) -> dict[int, str]:
    letters = {}
    for i in np.unique(chain_index):
        if i < 0 or i >= PDB_MAX_CHAINS:
            raise ValueError(f"chain index {i} cannot be written to PDB (at most {PDB_MAX_CHAINS} chains)")
        letters[int(i)] = PDB_CHAIN_IDS[i]
    return letters


def to_pdb(prot: Protein) -> str:
    """PDB text of the protein: one MODEL, TER after each chain, lines padded to 80 columns.

    Column-for-column the layout AlphaFold2 writes (so the same arrays give the same text).
    """
    letters = _chain_letters(prot.chain_index)
    residue_index = prot.residue_index.astype(np.int32)
    chain_index = prot.chain_index.astype(np.int32)
    lines = ["MODEL     1".ljust(80)]
    serial = 1
    for i in range(prot.num_residues):
        if i > 0 and chain_index[i] != chain_index[i - 1]:
            lines.append(
                format_ter_line(
                    serial, rc.resnames[prot.aatype[i - 1]], letters[chain_index[i - 1]], residue_index[i - 1]
                )
            )
            serial += 1
        resname = rc.resnames[prot.aatype[i]]
        for j, atom_name in enumerate(rc.atom_types):
            if prot.atom_mask[i, j] < 0.5:
                continue
            # atom37 holds only C, N, O and S atoms, whose element is the name's first letter.
            lines.append(
                format_atom_line(
                    serial,
                    atom_name,
                    resname,
                    letters[chain_index[i]],
                    residue_index[i],
                    prot.atom_positions[i, j],
                    prot.b_factors[i, j],
                    atom_name[0],
                )
            )
            serial += 1
    if prot.num_residues:
        lines.append(
            format_ter_line(serial, rc.resnames[prot.aatype[-1]], letters[chain_index[-1]], residue_index[-1])
        )
    lines += ["ENDMDL".ljust(80), "END".ljust(80)]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# mmCIF writing

_CHEM_COMP_NAMES = {
    "ALA": "ALANINE", "ARG": "ARGININE", "ASN": "ASPARAGINE", "ASP": "ASPARTIC ACID",
    "CYS": "CYSTEINE", "GLN": "GLUTAMINE", "GLU": "GLUTAMIC ACID", "GLY": "GLYCINE",
    "HIS": "HISTIDINE", "ILE": "ISOLEUCINE", "LEU": "LEUCINE", "LYS": "LYSINE",
    "MET": "METHIONINE", "PHE": "PHENYLALANINE", "PRO": "PROLINE", "SER": "SERINE",
    "THR": "THREONINE", "TRP": "TRYPTOPHAN", "TYR": "TYROSINE", "VAL": "VALINE",
    "UNK": "UNKNOWN",
}  # fmt: skip


def mmcif_chain_id(number: int) -> str:
    """mmCIF chain name of the 1-based ``number``: A..Z, then AA, BA, ... (reverse spreadsheet order)."""
    if number < 1:
        raise ValueError(f"chain numbers start at 1, got {number}")
    letters = []
    number -= 1
    while number >= 0:
        letters.append(chr(ord("A") + number % 26))
        number = number // 26 - 1
    return "".join(letters)


def _cif_value(value) -> str:
    text = str(value)
    if text == "":
        return "?"
    if (
        any(c.isspace() for c in text)
        or text[0] in "_#$'\"[];"
        or text.lower().startswith(("data_", "loop_"))
    ):
        return "'" + text + "'" if "'" not in text else '"' + text + '"'
    return text


def _cif_loop(category: str, columns: dict[str, list]) -> list[str]:
    names = list(columns)
    rows = list(zip(*(columns[n] for n in names)))
    if len(rows) == 1:
        width = max(len(n) for n in names) + len(category) + 2
        return [f"_{category}.{n}".ljust(width) + " " + _cif_value(v) for n, v in zip(names, rows[0])] + ["#"]
    lines = ["loop_"] + [f"_{category}.{n}" for n in names]
    cells = [[_cif_value(v) for v in row] for row in rows]
    widths = [max(len(row[k]) for row in cells) for k in range(len(names))]
    lines += [" ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return lines + ["#"]


def to_mmcif(prot: Protein, file_id: str = "af2cpu", model_type: str = "Monomer") -> str:
    """mmCIF text of the protein (PDBx/mmCIF dictionary, one model).

    Chains with the same sequence share one entity. ``_entity_poly_seq`` numbers each chain's
    residues by ``residue_index``, with numbering gaps (and any numbers from 1 up to the first
    residue) filled with UNK, as AlphaFold2 does, so ``label_seq_id`` matches the residue numbers.
    """
    if prot.num_residues == 0:
        raise ValueError("cannot write an empty Protein to mmCIF")
    file_id = "".join(c if c.isalnum() or c in "_-." else "_" for c in file_id) or "af2cpu"
    chain_index = prot.chain_index.astype(int)
    residue_index = prot.residue_index.astype(int)
    chains = list(OrderedDict.fromkeys(chain_index.tolist()))
    asym = {c: mmcif_chain_id(n + 1) for n, c in enumerate(chains)}

    # Full numbered sequence of each chain (gaps as UNK); identical sequences share an entity.
    chain_seq: dict[int, tuple[tuple[int, str], ...]] = {}
    for c in chains:
        sel = np.flatnonzero(chain_index == c)
        present = {int(residue_index[i]): rc.resnames[prot.aatype[i]] for i in sel}
        first, last = min(min(present), 1), max(present)
        chain_seq[c] = tuple((n, present.get(n, "UNK")) for n in range(first, last + 1))
    entity_of_seq: OrderedDict[tuple, int] = OrderedDict()
    entity = {c: entity_of_seq.setdefault(chain_seq[c], len(entity_of_seq) + 1) for c in chains}
    used_names = sorted({name for seq in entity_of_seq for _, name in seq})

    lines = [f"data_{file_id}", "#", f"_entry.id {_cif_value(file_id)}", "#"]
    lines += _cif_loop(
        "entity", {"id": list(range(1, len(entity_of_seq) + 1)), "type": ["polymer"] * len(entity_of_seq)}
    )
    lines += _cif_loop(
        "entity_poly",
        {
            "entity_id": list(range(1, len(entity_of_seq) + 1)),
            "type": ["polypeptide(L)"] * len(entity_of_seq),
            "pdbx_strand_id": [
                ",".join(asym[c] for c in chains if entity[c] == e) for e in range(1, len(entity_of_seq) + 1)
            ],
        },
    )
    seq_cols: dict[str, list] = {"entity_id": [], "num": [], "mon_id": [], "hetero": []}
    for seq, e in entity_of_seq.items():
        for num, name in seq:
            seq_cols["entity_id"].append(e)
            seq_cols["num"].append(num)
            seq_cols["mon_id"].append(name)
            seq_cols["hetero"].append("n")
    lines += _cif_loop("entity_poly_seq", seq_cols)
    lines += _cif_loop(
        "struct_asym", {"id": [asym[c] for c in chains], "entity_id": [entity[c] for c in chains]}
    )
    lines += _cif_loop(
        "chem_comp",
        {
            "id": used_names,
            "type": ["peptide linking" if n == "GLY" else "L-peptide linking" for n in used_names],
            "name": [_CHEM_COMP_NAMES[n] for n in used_names],
        },
    )
    lines += _cif_loop(
        "software",
        {
            "pdbx_ordinal": [1],
            "name": ["af2cpu"],
            "classification": ["other"],
            "description": [f"AlphaFold2 structure prediction ({model_type})"],
        },
    )

    site: dict[str, list] = {
        k: []
        for k in (
            "group_PDB",
            "id",
            "type_symbol",
            "label_atom_id",
            "label_alt_id",
            "label_comp_id",
            "label_asym_id",
            "label_entity_id",
            "label_seq_id",
            "pdbx_PDB_ins_code",
            "Cartn_x",
            "Cartn_y",
            "Cartn_z",
            "occupancy",
            "B_iso_or_equiv",
            "auth_seq_id",
            "auth_comp_id",
            "auth_asym_id",
            "auth_atom_id",
            "pdbx_PDB_model_num",
        )
    }
    serial = 1
    for i in range(prot.num_residues):
        resname = rc.resnames[prot.aatype[i]]
        c = int(chain_index[i])
        for j, atom_name in enumerate(rc.atom_types):
            if prot.atom_mask[i, j] < 0.5:
                continue
            x, y, z = prot.atom_positions[i, j]
            for key, value in (
                ("group_PDB", "ATOM"),
                ("id", serial),
                ("type_symbol", atom_name[0]),
                ("label_atom_id", atom_name),
                ("label_alt_id", "."),
                ("label_comp_id", resname),
                ("label_asym_id", asym[c]),
                ("label_entity_id", entity[c]),
                ("label_seq_id", int(residue_index[i])),
                ("pdbx_PDB_ins_code", "?"),
                ("Cartn_x", f"{x:.3f}"),
                ("Cartn_y", f"{y:.3f}"),
                ("Cartn_z", f"{z:.3f}"),
                ("occupancy", "1.00"),
                ("B_iso_or_equiv", f"{prot.b_factors[i, j]:.2f}"),
                ("auth_seq_id", int(residue_index[i])),
                ("auth_comp_id", resname),
                ("auth_asym_id", asym[c]),
                ("auth_atom_id", atom_name),
                ("pdbx_PDB_model_num", 1),
            ):
                site[key].append(value)
            serial += 1
    lines += _cif_loop("atom_site", site)
    return "\n".join(lines) + "\n"
