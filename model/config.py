"""Configuration of which AlphaFold2 models run and how (the `model` Hydra group).

Owned by the model package; kept free of torch imports so the CLI can compose configs fast.
"""

from dataclasses import dataclass, field

MONOMER_PTM_PRESETS = ["model_1_ptm", "model_2_ptm", "model_3_ptm", "model_4_ptm", "model_5_ptm"]


@dataclass
class ModelConfig:
    """Which presets to run and the recycling schedule."""

    names: list[str] = field(default_factory=lambda: list(MONOMER_PTM_PRESETS))
    num_recycle: int = 3
    # Stop recycling early when the mean change of Cα distances (Å) falls below this; 0 disables.
    recycle_early_stop_tolerance: float = 0.0
