"""runtime.precision: one function decides what each value means on a CPU; CPU flags are injected, so
no test depends on the ISA of the machine running it."""

from __future__ import annotations

import json
import logging
import os

import pytest
from test_scheduler_cache import write_single_sequence_features

from af2cpu.cli.bench import bench_precisions
from af2cpu.config import Precision, RuntimeConfig, compose_config
from af2cpu.errors import ConfigError
from af2cpu.layout import TargetDir
from af2cpu.model.memory import TargetShape, estimate_peak_memory, plan_options
from af2cpu.model.presets import get_preset
from af2cpu.model.weights import model_runs
from af2cpu.preprocessing.inputs import Target
from af2cpu.runtime import precision as precision_module
from af2cpu.runtime.precision import (
    bf16_units,
    native_bf16,
    onednn_cap,
    onednn_capped,
    planning_precisions,
    resolve_precision,
)
from af2cpu.scheduler.stages import StageContext, _infer_key, target_stages

AVX2 = {"avx2", "fma", "sse4_2"}
AVX512_BF16 = AVX2 | {"avx512f", "avx512_bf16"}
AMX = AVX2 | {"avx512f", "amx_tile", "amx_bf16"}


def on_cpu(monkeypatch, flags, speedup: float | None = 3.0) -> None:
    """Make this process see a CPU with ``flags`` whose bf16 products are ``speedup`` times fp32's."""
    monkeypatch.setattr(precision_module, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(precision_module, "bf16_speedup", lambda: speedup if native_bf16(flags) else None)


@pytest.mark.parametrize("flags, expected", [(AVX2, "fp32"), (AVX2 | {"avx512f", "avx512_vnni"}, "fp32"),
                                             (AVX512_BF16, "bf16"), (AMX, "bf16")])
def test_auto_is_bf16_only_where_bf16_is_native(flags, expected):
    assert resolve_precision("auto", flags) == expected
    assert resolve_precision(Precision.fp32, flags) is Precision.fp32


# The speed-ups measured (docs/benchmarks.md): an Intel Xeon with oneDNN kept to AVX512-BF16 0.53-0.64x,
# AMD Zen 4 2.6x, AMX 3-9x; an AVX2 CPU's emulated bf16 is never measured.
@pytest.mark.parametrize("flags, speedup, expected", [
    (AVX512_BF16, 0.62, "fp32"), (AVX512_BF16, 1.1, "fp32"), (AVX512_BF16, 2.6, "bf16"),
    (AMX, 3.1, "bf16"), (AMX, 0.9, "fp32"), (AVX2, 10.0, "fp32"),
])
def test_auto_takes_bf16_only_where_its_products_are_clearly_faster(flags, speedup, expected):
    assert resolve_precision("auto", flags, speedup=speedup) == expected
    # An explicit precision is what was asked, however fast.
    assert resolve_precision("bf16", AMX, speedup=speedup) is Precision.bf16
    assert resolve_precision("fp32", flags, speedup=speedup) is Precision.fp32


@pytest.mark.parametrize("speedup, expected", [(0.6, "fp32"), (2.6, "bf16")])
def test_this_cpus_auto_reads_its_measured_speedup(monkeypatch, speedup, expected):
    on_cpu(monkeypatch, AVX512_BF16, speedup)
    assert resolve_precision("auto") == expected
    assert planning_precisions("auto", elsewhere=False) == (Precision(expected),)


def test_the_bf16_speedup_is_measured_once_per_cpu_kept_and_measured_again_when_unreadable(tmp_path, monkeypatch,
                                                                                          caplog):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    folder = tmp_path / "af2cpu" / "cpu"
    precision_module.bf16_speedup.cache_clear()
    try:
        if not native_bf16():
            # Emulated bf16 is not worth measuring (minutes): nothing is measured or kept, auto is fp32.
            assert precision_module.bf16_speedup() is None
            assert resolve_precision("auto") is Precision.fp32
            assert not folder.exists()
            with pytest.raises(ValueError, match="emulated"):
                precision_module.measure_bf16_speedup(size=16, rounds=1)
            return
        speedup = precision_module.bf16_speedup()
        (kept,) = folder.glob("bf16-speedup-*.json")
        record = json.loads(kept.read_text())
        assert speedup == record["speedup"] > 0 and record["bf16_gflops"] > 0 and record["fp32_gflops"] > 0
        # Every later process reads the kept figure instead of measuring: one decision per CPU kind.
        kept.write_text(json.dumps({**record, "speedup": 0.5}))
        precision_module.bf16_speedup.cache_clear()
        assert precision_module.bf16_speedup() == 0.5 and resolve_precision("auto") is Precision.fp32
        # A damaged file is measured again, with a warning naming it, and replaced.
        for damaged in ("{not json", json.dumps({"speedup": "nan"}), json.dumps({"speedup": -1})):
            kept.write_text(damaged)
            precision_module.bf16_speedup.cache_clear()
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="af2cpu.runtime.precision"):
                assert precision_module.bf16_speedup() > 0
            assert str(kept) in caplog.text
            assert json.loads(kept.read_text())["speedup"] > 0
    finally:
        precision_module.bf16_speedup.cache_clear()


def test_the_bf16_units_are_named_amx_first():
    assert [bf16_units(f) for f in (AVX2, AVX512_BF16, AMX, AMX | AVX512_BF16)] == [
        None, "AVX512-BF16", "AMX", "AMX"]


def test_onednn_names_the_kernel_of_bf16_products_where_bf16_is_native():
    from af2cpu.bench.machine import kernel_info  # deferred: torch

    kernel = kernel_info()["bf16_matmul"]
    if not native_bf16():
        assert kernel is None  # not asked: an emulated product says nothing worth reporting
    else:
        # oneDNN's verbose name of its implementation; on AMX its tile kernels, not AVX512's.
        assert kernel is not None and "matmul" in kernel
        assert ("amx" in kernel) == (bf16_units() == "AMX")


def test_explicit_bf16_without_native_bf16_runs_with_one_warning_naming_the_cost(monkeypatch, caplog):
    monkeypatch.setenv(precision_module.WARNED_VARIABLE, "")  # empty: not warned yet; restored afterwards
    with caplog.at_level(logging.WARNING, logger="af2cpu.runtime.precision"):
        assert resolve_precision("bf16", AVX2) is Precision.bf16
        assert resolve_precision("bf16", AVX2) is Precision.bf16
        assert resolve_precision("bf16", AMX) is Precision.bf16
    (record,) = caplog.records
    assert "emulated" in record.message and "slower than fp32" in record.message
    assert "runtime.precision=auto" in record.message
    # Processes started from now on (Dask workers) inherit the mark and do not warn again.
    assert os.environ[precision_module.WARNED_VARIABLE] == "1"


def test_explicit_bf16_where_native_bf16_is_measured_slower_runs_with_one_warning(monkeypatch, caplog):
    monkeypatch.setenv(precision_module.WARNED_VARIABLE, "")
    with caplog.at_level(logging.WARNING, logger="af2cpu.runtime.precision"):
        assert resolve_precision("bf16", AMX, speedup=3.1) is Precision.bf16  # faster: nothing to say
        assert resolve_precision("bf16", AVX512_BF16, speedup=1.1) is Precision.bf16  # a little faster: as asked
        assert not caplog.records
        assert resolve_precision("bf16", AVX512_BF16, speedup=0.62) is Precision.bf16
        assert resolve_precision("bf16", AVX512_BF16, speedup=0.62) is Precision.bf16
    (record,) = caplog.records
    assert "0.62x" in record.message and "slower than fp32" in record.message
    assert "runtime.precision=auto" in record.message


def test_unknown_precision_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match="fp16.*auto, fp32, bf16"):
        resolve_precision("fp16", AVX2)
    with pytest.raises(ValueError, match="resolve"):
        _ = Precision.auto.nbytes


def test_auto_is_the_default_and_every_consumer_reads_the_one_resolution():
    assert compose_config([]).runtime.precision == "auto"
    here = resolve_precision("auto")
    faster = native_bf16() and precision_module.bf16_speedup() >= precision_module.BF16_SPEEDUP_NEEDED
    assert here is (Precision.bf16 if faster else Precision.fp32)
    shape = TargetShape(32, 8, 16, 0)
    # The memory planner and the model's options use the resolved precision, never "auto".
    options, estimate = plan_options(RuntimeConfig(), get_preset("model_1_ptm"), shape, limit=1 << 40)
    assert options.precision is here
    assert estimate.total == estimate_peak_memory(shape, here).total


def test_bench_times_bf16_by_default_only_where_it_is_native():
    assert bench_precisions(None, AVX2) == ["fp32"]
    assert bench_precisions(None, AMX) == ["fp32", "bf16"]
    # Also where auto keeps fp32 because bf16 gains too little: the bench shows what auto weighed.
    assert bench_precisions(None, AVX512_BF16) == ["fp32", "bf16"]
    assert bench_precisions(["auto"], AVX512_BF16) == ["bf16"]
    assert bench_precisions(["fp32", "auto"], AVX2) == ["fp32"]


@pytest.mark.parametrize("flags, same_as", [(AVX2, "fp32"), (AVX512_BF16, "bf16")])
def test_inference_cache_key_holds_the_resolved_precision(tmp_path, monkeypatch, flags, same_as):
    on_cpu(monkeypatch, flags)
    monkeypatch.setenv(precision_module.WARNED_VARIABLE, "1")
    folder = TargetDir(tmp_path / "T1")
    folder.path.mkdir()
    write_single_sequence_features(folder.features, "MKV")

    def key(precision: str) -> str:
        cfg = compose_config(["params=random", f"runtime.precision={precision}", "model.names=[model_1_ptm]"])
        (run,) = model_runs(cfg, multimer=False)
        return _infer_key(run, StageContext(Target("T1", "", "MKV"), cfg, folder), {})

    # A stage cache shared by CPUs with and without native bf16 never gives one's results to the other:
    # auto is keyed as what it resolves to on the CPU that runs it.
    other = "bf16" if same_as == "fp32" else "fp32"
    assert key("auto") == key(same_as) != key(other)


def test_planning_precisions_cover_fp32_and_bf16_where_auto_resolves_on_other_cpus(monkeypatch):
    on_cpu(monkeypatch, AMX)
    assert planning_precisions("auto", elsewhere=True) == (Precision.fp32, Precision.bf16)
    assert planning_precisions("auto", elsewhere=False) == (Precision.bf16,)
    assert planning_precisions(Precision.fp32, elsewhere=True) == (Precision.fp32,)


@pytest.mark.parametrize("flags", [AVX2, AMX], ids=["avx2", "amx"])
def test_inference_memory_under_auto_covers_fp32_on_other_machines_and_resolves_here_locally(monkeypatch, flags):
    on_cpu(monkeypatch, flags)
    monkeypatch.setenv(precision_module.WARNED_VARIABLE, "1")

    def memory(*overrides: str) -> int:  # the inference stage's request for 900 residues
        cfg = compose_config(["params=random", "model.names=[model_1_ptm]", *overrides])
        (infer,) = [s for s in target_stages(cfg, "infer") if s.name == "infer_model_1_ptm"]
        return infer.memory(900)

    fp32, bf16 = memory("runtime.precision=fp32"), memory("runtime.precision=bf16")
    assert fp32 > bf16
    # dask-jobqueue workers and an attached scheduler's workers may lack native bf16, whatever CPU plans.
    for elsewhere in ("scheduler=slurm", "scheduler=pbs", "scheduler.address='tcp://10.0.0.1:8786'"):
        assert memory(elsewhere) == fp32, elsewhere
    # Local workers run on this CPU: auto is what it resolves to here.
    assert memory() == (bf16 if flags is AMX else fp32)


@pytest.mark.parametrize("cap, left", [
    ("AVX2", set()), ("avx512_core_vnni", set()),  # oneDNN emulates bf16 below AVX512_CORE_BF16
    ("AVX512_CORE_BF16", {"avx512_bf16"}), ("AVX10_1_512", {"avx512_bf16"}),  # no tiles below AMX
    ("AVX512_CORE_AMX", {"avx512_bf16", "amx_bf16"}), ("ALL", {"avx512_bf16", "amx_bf16"}),
    ("no_such_isa", {"avx512_bf16", "amx_bf16"}), ("", {"avx512_bf16", "amx_bf16"}),
])
def test_onednn_isa_cap_takes_the_bf16_units_it_forbids(cap, left):
    flags = frozenset(AMX | {"avx512_bf16"})
    capped = onednn_capped(flags, {"ONEDNN_MAX_CPU_ISA": cap})
    assert capped & precision_module.NATIVE_BF16_FLAGS == left
    assert flags - capped <= precision_module.NATIVE_BF16_FLAGS  # nothing else is touched
    # The older variable counts too; where both are set, oneDNN's current name wins.
    assert onednn_capped(flags, {"DNNL_MAX_CPU_ISA": cap}) == capped
    assert onednn_capped(flags, {"ONEDNN_MAX_CPU_ISA": "ALL", "DNNL_MAX_CPU_ISA": "AVX2"}) == flags
    assert onednn_cap({"ONEDNN_MAX_CPU_ISA": cap}) == (f"ONEDNN_MAX_CPU_ISA={cap}" if cap else None)


def test_a_process_with_onednn_capped_below_bf16_resolves_auto_to_fp32():
    # A fresh process, as a job with the cap in its environment starts: whatever this CPU has, oneDNN
    # would emulate bf16 there, so auto must not choose it (and bench must not time it).
    import subprocess
    import sys

    code = ("from af2cpu.runtime.precision import native_bf16, resolve_precision; "
            "print(native_bf16(), resolve_precision('auto').value)")
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "fp32"]
