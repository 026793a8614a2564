"""The typed configuration: defaults, overrides, and errors that name the bad key."""

import pytest
from omegaconf.errors import ReadonlyConfigError

from af2cpu.config import compose_config
from af2cpu.data import MINI_DB_ROOT
from af2cpu.errors import ConfigError


def test_default_config_points_at_bundled_mini_databases():
    cfg = compose_config([])
    assert cfg.db.preset.value == "mini"
    assert cfg.db.uniref90 == str(MINI_DB_ROOT / "uniref90" / "uniref90.fasta")
    assert cfg.db.pdb70 == str(MINI_DB_ROOT / "pdb70" / "pdb70")
    assert list(cfg.model.names) == [f"model_{i}_ptm" for i in range(1, 6)]


def test_model_groups_choose_the_network_by_target():
    from af2cpu.model.weights import model_runs

    auto = compose_config([])
    assert auto.model.kind == "auto" and auto.model.num_predictions_per_model == 5
    assert [r.name for r in model_runs(auto, False)] == [f"model_{i}_ptm" for i in range(1, 6)]
    runs = model_runs(compose_config(["random_seed=3"]), True)
    # AlphaFold2's run_alphafold: prediction k of model i is runner i*5+k, seeded index + seed * 25.
    assert [(r.name, r.seed) for r in runs[4:6]] == [("model_1_multimer_v3_pred_4", 79), ("model_2_multimer_v3_pred_0", 80)]
    assert compose_config(["model=multimer"]).model.kind == "multimer"
    assert list(compose_config(["model=monomer"]).model.names) == [f"model_{i}" for i in range(1, 6)]
    with pytest.raises(ConfigError, match="model.kind=monomer .* folds single chains only"):
        model_runs(compose_config(["model=monomer_ptm"]), True)
    with pytest.raises(ConfigError, match="model.names lists model_1_multimer_v3, which is not a monomer preset"):
        model_runs(compose_config(["model.names=[model_1_multimer_v3]"]), False)


def test_full_preset_follows_official_layout_under_root():
    cfg = compose_config(["db=full", "db.root=/data/af2"])
    assert cfg.db.mgnify == "/data/af2/mgnify/mgy_clusters_2022_05.fa"
    assert cfg.db.uniref30 == "/data/af2/uniref30/UniRef30_2021_03"
    assert cfg.db.template_mmcif_dir == "/data/af2/pdb_mmcif/mmcif_files"
    assert cfg.db.obsolete_pdbs == "/data/af2/pdb_mmcif/obsolete.dat"


def test_single_database_path_can_be_overridden():
    cfg = compose_config(["db=reduced", "db.root=/r", "db.small_bfd=/fast/small_bfd.fasta"])
    assert cfg.db.small_bfd == "/fast/small_bfd.fasta"
    assert cfg.db.uniref90 == "/r/uniref90/uniref90.fasta"


def test_unknown_key_is_an_error_naming_it_and_the_valid_keys():
    with pytest.raises(ConfigError) as info:
        compose_config(["db.uniref09=/x"])
    message = str(info.value)
    assert "db.uniref09" in message
    assert "db.uniref90" in message


def test_unknown_top_level_key_is_an_error():
    with pytest.raises(ConfigError, match="'nonsense'"):
        compose_config(["nonsense=1"])


def test_invalid_enum_value_names_the_choices():
    with pytest.raises(ConfigError) as info:
        compose_config(["runtime.precision=fp16"])
    assert "fp16" in str(info.value) and "bf16" in str(info.value)


def test_unknown_group_option_names_the_available_ones():
    with pytest.raises(ConfigError) as info:
        compose_config(["db=huge"])
    assert "huge" in str(info.value) and "full" in str(info.value)


def test_wrong_type_is_an_error():
    with pytest.raises(ConfigError, match="num_recycle"):
        compose_config(["model.num_recycle=many"])


def test_config_is_read_only():
    cfg = compose_config([])
    with pytest.raises(ReadonlyConfigError):
        cfg.runtime.threads = 4


def test_ipex_backend_without_ipex_is_a_clear_error():
    import importlib.util

    from af2cpu.errors import ConfigError as Error
    from af2cpu.model.weights import load_model

    if importlib.util.find_spec("intel_extension_for_pytorch") is not None:
        return  # with IPEX installed the back end is available; nothing to refuse
    cfg = compose_config(["params=random", "runtime.backend=ipex", "model.names=[model_3_ptm]"])
    with pytest.raises(Error, match="runtime.backend=native"):
        load_model(cfg, "model_3_ptm")


def test_compile_settings_reach_the_model_options():
    from af2cpu.model.memory import TargetShape, plan_options
    from af2cpu.model.presets import get_preset

    cfg = compose_config(["runtime.compile=true", "runtime.precision=bf16"])
    options, _ = plan_options(cfg.runtime, get_preset("model_1_ptm"), TargetShape(50, 10, 10, 0))
    assert options.compile and options.precision == "bf16" and options.compile_cache_dir.endswith("inductor")


def test_recycling_defaults_to_each_presets_own_and_an_override_wins():
    from af2cpu.model.weights import recycling

    cfg = compose_config([])
    # AlphaFold2's defaults: 3 recycles without early stop for the monomer presets, up to 20 with a
    # 0.5 Å early stop for AlphaFold-Multimer v3.
    assert recycling(cfg, "model_1_ptm") == (3, 0.0)
    assert recycling(cfg, "model_1_multimer_v3") == (20, 0.5)
    cfg = compose_config(["model.num_recycle=1", "model.recycle_early_stop_tolerance=0"])
    assert recycling(cfg, "model_1_multimer_v3") == (1, 0.0) and recycling(cfg, "model_2_ptm") == (1, 0.0)
