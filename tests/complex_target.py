"""A complex's target folder as `af2cpu predict` leaves it, built from a tiny real multimer example.

Human haemoglobin alpha and beta (the bundled example) are searched with the real jackhmmer against the
bundled mini UniProt (species-tagged globins: pairing pairs real rows, in about 0.2 s a chain); the hits
are each chain's MSA and its pairing MSA, and af2cpu's multimer data path (DeepMind's, tested equal to it
in test_preprocessing_multimer) pairs and merges them into the example. No templates. The model outputs
are random head logits turned into pLDDT, PAE, pTM and ipTM by the model's own confidence code.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from af2cpu import formats
from af2cpu.common import protein
from af2cpu.common import residue_constants as rc
from af2cpu.data import DATA_DIR
from af2cpu.io import atomic_write_text, save_features_npz
from af2cpu.layout import TargetDir
from af2cpu.model.confidence import confidence_metrics
from af2cpu.preprocessing import features, multimer, templates, tools
from af2cpu.preprocessing.inputs import read_fasta_targets

UNIPROT = DATA_DIR / "mini" / "uniprot" / "uniprot.fasta"
PDB_SEQRES = DATA_DIR / "mini" / "pdb_seqres" / "pdb_seqres.txt"
MODELS = ["model_1_multimer_v3_pred_0", "model_2_multimer_v3_pred_0"]


def haemoglobin_sequences() -> tuple[str, str]:
    (target,) = read_fasta_targets(DATA_DIR / "examples" / "hemoglobin_ab.fasta")
    alpha, beta = (c.sequence for c in target.chains)
    return alpha, beta


def search_uniprot(sequence: str, name: str, work: Path) -> Path:
    """The real jackhmmer search of `sequence` against the mini UniProt: its Stockholm file."""
    query = work / f"{name}.fasta"
    query.write_text(f">{name}\n{sequence}\n")
    out = work / f"{name}_uniprot_hits.sto"
    tools.jackhmmer(query, UNIPROT, out, cpus=1)
    return out


def search_pdb_seqres(msa_sto: Path, name: str, work: Path) -> Path:
    """The real multimer template search (hmmbuild on `msa_sto`, hmmsearch against the mini
    pdb_seqres.txt): its Stockholm file."""
    out = work / f"{name}_pdb_hits.sto"
    tools.search_pdb_seqres(msa_sto, PDB_SEQRES, out, cpus=1)
    return out


def monomer_features(sequence: str, msa_path: Path, max_rows: int | None = None) -> dict:
    """A chain's monomer raw features from its MSA (its first `max_rows` rows), with the multimer's
    empty template."""
    msa = features.read_msa(msa_path, sequence, max_rows)
    return {**features.sequence_features(sequence, "chain"), **features.msa_features([msa]),
            **templates.empty_template_features(len(sequence))}


def complex_example(chains: list[tuple[str, str]], sto: dict[str, Path],
                    max_rows: int | None = None) -> tuple[dict, list[multimer.AssemblyChain]]:
    """The multimer example of (chain id, sequence) `chains` from each distinct sequence's UniProt hits
    (their first `max_rows` rows)."""
    sequences = dict.fromkeys(seq for _, seq in chains)
    monomers = {seq: monomer_features(seq, sto[seq], max_rows) for seq in sequences}
    pairing = {seq: features.read_msa(sto[seq], seq, max_rows or multimer.MAX_UNIPROT_HITS) for seq in sequences}
    return multimer.complex_features(chains, monomers, pairing if len(sequences) > 1 else {})


def helix_positions(length: int) -> np.ndarray:
    """atom37 positions of an ideal-ish alpha helix (N, CA, C, O, CB placed; others at CA)."""
    t = np.arange(length) * np.deg2rad(100.0)
    ca = np.stack([2.3 * np.cos(t), 2.3 * np.sin(t), 1.5 * np.arange(length)], axis=-1)
    pos = np.repeat(ca[:, None, :], rc.atom_type_num, axis=1).copy()
    for name, shift in (("N", (-0.5, 1.2, -0.5)), ("C", (0.6, -1.2, 0.5)), ("O", (1.6, -1.2, 1.1)),
                        ("CB", (1.0, 1.0, 0.0))):
        pos[:, rc.atom_order[name]] = ca + np.asarray(shift)
    return pos


def write_complex_target(path: Path, chains: list[tuple[str, str]], sto: dict[str, Path],
                         rng: np.random.Generator, description: str = "complex", max_rows: int | None = None,
                         pdb_hits: dict[str, Path] | None = None) -> dict:
    """A complex's target folder: target.json, features.npz, features_report.json, msas/<chain>/ (the
    UniProt hits, and `pdb_hits` by sequence), result_<model>.npz, confidence/PAE JSON, unrelaxed and
    ranked PDB/mmCIF; returns what it wrote."""
    folder = TargetDir(path)
    example, assembly = complex_example(chains, sto, max_rows)
    first_ids: dict[str, str] = {}
    for chain_id, seq in chains:
        first_ids.setdefault(seq, chain_id)
    sequence = ":".join(seq for _, seq in chains)
    folder.claim(path.name, description, sequence,
                 chains=[{"id": c, "description": f"{description} chain {c}", "sequence": s} for c, s in chains])
    save_features_npz(folder.features, example)
    report = {"id": path.name, "description": description, "sequence": sequence,
              "chains": [{"id": c.chain_id, "description": f"{description} chain {c.chain_id}",
                          "entity_id": c.entity_id, "sym_id": c.sym_id, "asym_id": c.asym_id,
                          "length": len(c.sequence), "searched_as": first_ids[c.sequence]} for c in assembly],
              "msa_rows": int(example["num_alignments"])}
    atomic_write_text(folder.features_report, json.dumps(report, indent=2) + "\n")
    for seq, chain_id in first_ids.items():
        (folder.msas / chain_id).mkdir(parents=True, exist_ok=True)
        (folder.msas / chain_id / "uniprot_hits.sto").write_bytes(sto[seq].read_bytes())
        if pdb_hits:
            (folder.msas / chain_id / "pdb_hits.sto").write_bytes(pdb_hits[seq].read_bytes())

    length = len(example["aatype"])
    asym = np.asarray(example["asym_id"])
    outs, pdbs, cifs = {}, {}, {}
    for index, model in enumerate(MODELS):
        heads = {
            "predicted_lddt": {"logits": (2.0 * rng.normal(size=(length, 50)) + index).astype(np.float32)},
            "predicted_aligned_error": {"logits": (2.0 * rng.normal(size=(length, length, 64))).astype(np.float32),
                                        "breaks": np.linspace(0.0, 31.0, 63, dtype=np.float32)},
        }
        out = {**heads, "structure_module": {
            "final_atom_positions": helix_positions(length).astype(np.float32),
            "final_atom_mask": rc.STANDARD_ATOM_MASK[example["aatype"]].astype(np.float32)}}
        out.update(confidence_metrics(heads, asym_id=asym))
        formats.write_model_outputs(folder, model, out)
        prot = formats.protein_from_prediction(example, out)
        pdbs[model] = protein.to_pdb(prot)
        cifs[model] = protein.to_mmcif(prot, file_id=f"{path.name}_{model}", model_type="Multimer")
        atomic_write_text(folder.unrelaxed(model), pdbs[model])
        outs[model] = out
    confidences = {m: float(o["ranking_confidence"]) for m, o in outs.items()}
    order = formats.rank_models(confidences)
    atomic_write_text(folder.ranking_debug, formats.ranking_debug_json(
        confidences, multimer=True, untrained_params=True))
    formats.write_ranked_structures(folder, order, pdbs, cifs)
    return {"outs": outs, "order": order, "features": example, "assembly": assembly}
