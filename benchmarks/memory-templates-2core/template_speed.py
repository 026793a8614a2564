"""The template embedding at L residues with 4 templates, this tree's against an older one, timed
alternately in one process (min and median of 7 calls each, fp32 and bf16).

Usage (from the repository root): python benchmarks/memory-templates-2core/template_speed.py L OLD_TEMPLATE_PY,
OLD_TEMPLATE_PY being main's model/template.py before templates one at a time
(`git show 2099c9d:model/template.py`).
"""

import importlib.util
import statistics
import sys
import time

import torch

sys.path.insert(0, "tests")
import test_model_template_stream as helpers

from af2cpu.model.options import Options
from af2cpu.model.presets import TemplateConfig
from af2cpu.model.template import TemplateEmbedding


def main() -> None:
    length, path = int(sys.argv[1]), sys.argv[2]
    spec = importlib.util.spec_from_file_location("old_template", path)
    old = importlib.util.module_from_spec(spec)
    sys.modules["old_template"] = old
    spec.loader.exec_module(old)
    helpers.L = length
    torch.manual_seed(0)
    new_module = TemplateEmbedding(TemplateConfig(), 128).eval()
    old_module = old.TemplateEmbedding(TemplateConfig(), 128).eval()
    with torch.no_grad():
        for p in new_module.parameters():
            p.copy_(torch.randn(p.shape) * p.shape[0] ** -0.5 if p.dim() > 1 else 1 + 0.1 * torch.randn(p.shape))
    old_module.load_state_dict(new_module.state_dict())
    batch = helpers._templates([1.0, 1.0, 1.0, 1.0])
    mask = torch.ones(length, length)
    for dtype in (torch.float32, torch.bfloat16):
        for module in (new_module, old_module):
            module.options = Options(precision="bf16" if dtype == torch.bfloat16 else "fp32")
        pair = torch.randn(length, length, 128).to(dtype)
        times = {"old": [], "new": []}
        with torch.inference_mode():
            a, b = old_module(pair, batch, mask).float(), new_module(pair, batch, mask).float()
            print(dtype, "relative difference", float((a - b).abs().max() / a.abs().max()))
            for r in range(7):
                pairs = [("old", old_module), ("new", new_module)]
                for name, module in pairs if r % 2 == 0 else pairs[::-1]:
                    start = time.perf_counter()
                    module(pair, batch, mask)
                    times[name].append(time.perf_counter() - start)
        print(dtype, {k: (round(min(v), 3), round(statistics.median(v), 3)) for k, v in times.items()})


if __name__ == "__main__":
    main()
