"""Shared test configuration.

In CI (CI=true) a skipped test marked `reference` fails the session: the reference extra is installed
there, and a comparison that silently did not run proves nothing. A strict expected failure (xfail) did
run: it is reported by pytest as skipped, but it is not one.

``--backend=ipex`` (or AF2CPU_TEST_BACKEND=ipex) runs every model whose parameters a test loads through
the ipex back end (``runtime.backend=ipex``, af2cpu.model.ipex_backend): ``make test-ipex`` runs the
model's fidelity tests that way, in a venv with the torch IPEX needs. Without IPEX it is a usage error.
"""

import os
import shutil
import tempfile

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")

# af2cpu's caches (the bf16 speed-up per CPU, the planner's parameter counts, compiled kernels) go to a folder of
# this session, subprocesses included, not into the user's: tests damage and remove them. Official parameters are
# still looked for where the user keeps them.
_user_cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
os.environ.setdefault("AF2CPU_PARAMS_DIR", os.path.join(_user_cache, "af2cpu", "params"))
_session_cache = tempfile.mkdtemp(prefix="af2cpu-test-cache-")
os.environ["XDG_CACHE_HOME"] = _session_cache

_skipped_reference: list[str] = []
# --backend=ipex: layers converted, and GEMMs run prepacked per dtype (none at all: the option proved nothing).
_backend_counts: dict[str, int] = {}


def pytest_addoption(parser):
    parser.addoption("--backend", choices=("native", "ipex"), default=os.environ.get("AF2CPU_TEST_BACKEND", "native"),
                     help="the model back end (runtime.backend) of the tests that load parameters (default native)")


def pytest_configure(config):
    backend = config.getoption("--backend")
    if backend == "native":
        return
    # Before the test modules import load_params: each model a test fills gets the back end right after.
    from af2cpu.errors import ConfigError
    from af2cpu.model import params
    from af2cpu.model.ipex_backend import IpexLinear, import_ipex
    from af2cpu.model.weights import apply_backend

    try:
        import_ipex()
    except ConfigError as exc:  # say why in pytest's words, before any test runs
        raise pytest.UsageError(f"--backend={backend}: {exc}") from None
    load = params.load_params

    def load_then_apply_backend(module, *args, **kwargs):
        result = load(module, *args, **kwargs)
        apply_backend(module, backend)
        converted = sum(type(m) is IpexLinear for m in module.modules())
        _backend_counts["layers"] = _backend_counts.get("layers", 0) + converted
        return result

    packed = IpexLinear._packed

    def counted_packed(self, dtype):
        key = f"{str(dtype).removeprefix('torch.')} GEMMs"
        _backend_counts[key] = _backend_counts.get(key, 0) + 1
        return packed(self, dtype)

    params.load_params = load_then_apply_backend
    IpexLinear._packed = counted_packed


def pytest_report_header(config):
    return f"af2cpu model back end: {config.getoption('--backend')}"


def pytest_runtest_logreport(report):
    skipped = report.skipped and not hasattr(report, "wasxfail")  # an expected failure ran
    reason = str(report.longrepr).lower() if skipped else ""
    if skipped and (
        "reference" in report.keywords or any(word in reason for word in ("alphafold", "jax", "haiku"))
    ):
        _skipped_reference.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_session_cache, ignore_errors=True)
    if session.config.getoption("--backend") != "native" and session.testscollected:
        print(f"\n--backend={session.config.getoption('--backend')}: {_backend_counts or 'no layer converted'}")
        if not any(key.endswith("GEMMs") for key in _backend_counts):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if os.environ.get("CI") and _skipped_reference:
        print(f"\nCI: {len(_skipped_reference)} reference test(s) skipped: {_skipped_reference[:5]}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def fresh_decisions():
    """af2cpu's kernels' build and decisions (af2cpu.model.kernels) forgotten before and after a test (the real
    ones come back on next use)."""
    from af2cpu.model import kernels  # deferred: torch, only for the tests that ask

    def clear():
        for cached in (kernels.load, kernels.speedup, kernels.uses_kernel, kernels.elementwise_speedup,
                       kernels.uses_elementwise):
            cached.cache_clear()
    clear()
    yield
    clear()
