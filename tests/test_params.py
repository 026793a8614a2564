"""Official parameter files: exact layout, round trip, clear errors, random stand-ins, download, CLI."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from af2cpu.cli import params as params_cli
from af2cpu.config import compose_config
from af2cpu.errors import Af2CpuError, InputError
from af2cpu.model.alphafold import AlphaFold
from af2cpu.model.params import (
    download_params,
    export_params,
    official_shapes,
    preset_from_filename,
    random_params,
    read_params,
    write_npz,
    write_safetensors,
)
from af2cpu.model.presets import PRESETS
from af2cpu.model.primitives import Linear, normal_parameter
from af2cpu.model.weights import load_model, model_seed

TREE = Path(__file__).parent / "data" / "model" / "params_model_1_ptm.tree.tsv"


def _skeleton(preset):
    with torch.device("meta"):
        return AlphaFold(preset)


def _tree(path: Path = TREE):
    out = {}
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            key, shape, _dtype = line.split("\t")
            out[key] = tuple(int(x) for x in shape.strip("()").split(",") if x.strip())
    return out


def test_model_1_ptm_holds_exactly_the_official_tensors():
    ours = {k: shape for k, (shape, _) in official_shapes(_skeleton("model_1_ptm")).items()}
    assert ours == _tree()  # 338 tensors, names and shapes of params_model_1_ptm.npz


def test_presets_differ_only_in_templates_and_pae_head():
    full = set(_tree())
    pae = {k for k in full if "/predicted_aligned_error_head/" in k}
    templates = {k for k in full if "/template_" in k}
    assert set(official_shapes(_skeleton("model_1"))) == full - pae
    assert set(official_shapes(_skeleton("model_3_ptm"))) == full - templates
    assert set(official_shapes(_skeleton("model_5"))) == full - templates - pae


def test_presets_carry_the_published_settings():
    monomers = [p for p in PRESETS.values() if not p.multimer]
    assert [p for p in monomers if p.use_templates] == [PRESETS[n] for n in
                                                        ("model_1", "model_2", "model_1_ptm", "model_2_ptm")]
    assert {n: PRESETS[n].max_extra_msa for n in ("model_1", "model_2", "model_3", "model_4", "model_5")} == \
        {"model_1": 5120, "model_2": 1024, "model_3": 5120, "model_4": 5120, "model_5": 1024}
    assert PRESETS["model_1_ptm"].num_msa_clusters == 508 and PRESETS["model_3_ptm"].num_msa_clusters == 512
    assert all(p.predicted_aligned_error == p.name.endswith("_ptm") for p in monomers)


@pytest.fixture(scope="module")
def model_3_ptm_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("params") / "params_model_3_ptm.npz"
    flat = random_params(_skeleton("model_3_ptm"), seed=7)
    write_npz(path, flat)
    return path, flat


def test_random_params_are_fan_in_scaled():
    flat = random_params(_skeleton("model_5"), seed=0)
    w = flat["alphafold/alphafold_iteration/evoformer/evoformer_iteration/msa_transition/transition1//weights"]
    assert w.shape == (48, 256, 1024) and w.dtype == np.float32
    assert abs(w.std() - 256**-0.5) < 1e-3
    assert np.all(flat["alphafold/alphafold_iteration/evoformer/prev_pair_norm//scale"] != 1.0)  # not the init


def test_a_meta_skeleton_is_not_filled_and_a_network_for_use_is(monkeypatch):
    torch.manual_seed(0)
    linear, weight = Linear(256, 64), normal_parameter(256, 4, 8, std=256**-0.5)
    assert abs(float(linear.weights.detach().std()) - 256**-0.5) < 0.002  # 16384 draws: standard error 0.0004
    torch.manual_seed(0)
    torch.randn(256, 64)  # Linear's draw
    assert torch.equal(weight, torch.randn(256, 4, 8) * 256**-0.5)  # the numbers it always had

    def no_fill(*args, **kwargs):
        raise AssertionError("a meta skeleton was filled")

    monkeypatch.setattr(torch.Tensor, "normal_", no_fill)
    monkeypatch.setattr(torch, "randn", no_fill)
    with torch.device("meta"):
        assert Linear(256, 64).weights.is_meta and normal_parameter(256, 4, std=1.0).is_meta


def test_params_random_loads_exactly_the_random_parameters_into_the_network():
    cfg = compose_config(["params=random", "model.names=[model_5]"])
    model = load_model(cfg, "model_5")  # built on the meta device, then loaded
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    expected = random_params(_skeleton("model_5"), seed=model_seed(cfg, "model_5"))
    exported = export_params(model)
    assert exported.keys() == expected.keys()
    assert all(np.array_equal(exported[k], expected[k]) for k in expected)


def test_load_export_round_trip_is_identical(model_3_ptm_file, tmp_path):
    path, flat = model_3_ptm_file
    model = AlphaFold.from_params(path)  # preset from the file name
    assert model.preset.name == "model_3_ptm"
    out = tmp_path / "again.npz"
    write_npz(out, export_params(model))
    again = read_params(out)
    assert again.keys() == flat.keys()
    assert all(again[k].dtype == np.float32 and np.array_equal(again[k], flat[k]) for k in flat)


def test_safetensors_cache_loads_the_same_weights(model_3_ptm_file, tmp_path):
    import af2cpu.model

    path, flat = model_3_ptm_file
    cache = tmp_path / "cache"
    af2cpu.model.AlphaFold.from_params(path, cache_dir=cache)  # writes the cache
    (cached,) = cache.glob("params_model_3_ptm.*.safetensors")
    assert read_params(cached).keys() == flat.keys()
    exported = export_params(af2cpu.model.AlphaFold.from_params(path, cache_dir=cache))  # reads it
    assert all(np.array_equal(exported[k], flat[k]) for k in flat)
    copy = tmp_path / "params_model_3_ptm.safetensors"
    write_safetensors(copy, flat)
    assert AlphaFold.from_params(copy).preset.name == "model_3_ptm"


def test_missing_unexpected_and_misshaped_keys_are_listed(model_3_ptm_file, tmp_path):
    _, flat = model_3_ptm_file
    bad = dict(flat)
    gone = "alphafold/alphafold_iteration/structure_module/initial_projection//bias"
    del bad[gone]
    bad["alphafold/alphafold_iteration/evoformer/typo//weights"] = np.zeros((2, 2), np.float32)
    wrong = "alphafold/alphafold_iteration/distogram_head/half_logits//weights"
    bad[wrong] = np.zeros((128, 63), np.float32)
    path = tmp_path / "params_model_3_ptm.npz"
    write_npz(path, bad)
    with pytest.raises(InputError) as err:
        AlphaFold.from_params(path)
    message = str(err.value)
    assert gone in message and "evoformer/typo//weights" in message and wrong in message
    assert "(128, 63)" in message and "(128, 64)" in message and str(path) in message


def test_preset_that_does_not_match_the_file_is_a_clear_error(model_3_ptm_file, tmp_path):
    _, flat = model_3_ptm_file
    no_pae = {k: v for k, v in flat.items() if "/predicted_aligned_error_head/" not in k}
    path = tmp_path / "params_model_3.npz"
    write_npz(path, no_pae)
    with pytest.raises(InputError, match="predicted_aligned_error_head.*lacks the predicted-aligned-error"):
        AlphaFold.from_params(path, preset="model_3_ptm")
    with pytest.raises(InputError, match="template_embedding"):
        AlphaFold.from_params(path, preset="model_1")


def test_truncated_or_unnamed_file_is_a_clear_error(model_3_ptm_file, tmp_path):
    path, _ = model_3_ptm_file
    cut = tmp_path / "params_model_3_ptm.npz"
    cut.write_bytes(path.read_bytes()[: 1 << 20])
    with pytest.raises(InputError, match="truncated"):
        AlphaFold.from_params(cut)
    with pytest.raises(InputError, match="cannot tell the model preset"):
        AlphaFold.from_params(tmp_path / "weights.npz")
    assert preset_from_filename("params_model_2_ptm.npz") == "model_2_ptm"
    assert preset_from_filename("/x/params_model_4.npz") == "model_4"
    assert preset_from_filename("params_model_1_multimer_v3.npz") == "model_1_multimer_v3"
    assert preset_from_filename("params_model_1_multimer_v4.npz") is None


def test_params_random_cli_writes_an_official_file(tmp_path, capsys):
    import argparse

    parser = argparse.ArgumentParser()
    params_cli.add_arguments(parser)
    out = tmp_path / "params_model_5.npz"
    assert params_cli.run(parser.parse_args(["random", "--preset", "model_5", "--seed", "3", str(out)])) == 0
    flat = read_params(out)
    assert flat.keys() == set(official_shapes(_skeleton("model_5")))
    assert np.array_equal(flat["alphafold/alphafold_iteration/evoformer/preprocess_1d//weights"],
                          random_params(_skeleton("model_5"), seed=3)[
                              "alphafold/alphafold_iteration/evoformer/preprocess_1d//weights"])
    assert "model_5" in capsys.readouterr().out


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with HTTP Range support (what the parameter bucket offers)."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        if "Range" in self.headers:
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])


@pytest.fixture
def served_tarball(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        payload = np.arange(50_000, dtype=np.float32).tobytes()
        info = tarfile.TarInfo("params_model_1.npz")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    (root / "alphafold_params_2022-12-06.tar").write_bytes(buf.getvalue())
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_RangeHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/alphafold_params_2022-12-06.tar", buf.getvalue()
    server.shutdown()


def test_download_resumes_verifies_and_unpacks(served_tarball, tmp_path):
    url, data = served_tarball
    dest = tmp_path / "params"
    dest.mkdir()
    (dest / "alphafold_params_2022-12-06.tar.part").write_bytes(data[:70_000])  # an interrupted download
    digest = hashlib.sha256(data).hexdigest()
    path = download_params(dest, url, expected_size=len(data), sha256=digest)
    assert path.read_bytes() == data
    assert (dest / "params_model_1.npz").stat().st_size == 200_000
    assert not (dest / "alphafold_params_2022-12-06.tar.part").exists()


def test_download_with_wrong_checksum_or_dead_server_is_a_clear_error(served_tarball, tmp_path):
    url, _data = served_tarball
    with pytest.raises(Af2CpuError, match="sha256"):
        download_params(tmp_path / "a", url, sha256="0" * 64)
    with pytest.raises(Af2CpuError, match="HTTP 404"):
        download_params(tmp_path / "b", url + ".missing")


def test_params_download_cli(served_tarball, tmp_path):
    import argparse

    url, data = served_tarball
    parser = argparse.ArgumentParser()
    params_cli.add_arguments(parser)
    args = parser.parse_args(["download", "--url", url, "--dest", str(tmp_path / "p"), "--size", str(len(data))])
    assert params_cli.run(args) == 0
    assert (tmp_path / "p" / "params_model_1.npz").is_file()
