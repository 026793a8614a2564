"""Domain code shared by every stage: residue constants, Protein <-> PDB/mmCIF."""
