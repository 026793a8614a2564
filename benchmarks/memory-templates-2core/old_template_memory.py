"""Peak RSS of one pass with an older template embedding (all templates kept for the attention, the
residual sum a new pair), 4 templates holding structures: the inputs and measurement of
`af2cpu bench --memory` (af2cpu.bench.memory).

Usage: python old_template_memory.py L fp32|bf16 OLD_TEMPLATE_PY, OLD_TEMPLATE_PY being main's
model/template.py before templates one at a time (`git show 2099c9d:model/template.py`).
"""

import importlib.util
import json
import os
import sys

THREADS = 2
os.environ["OMP_NUM_THREADS"] = str(THREADS)

# torch reads OMP_NUM_THREADS once, when first imported: after it is set.
import torch

from af2cpu.bench.memory import _reset_peak_rss, _rss
from af2cpu.bench.model import make_inputs
from af2cpu.model import alphafold
from af2cpu.model.options import Options
from af2cpu.runtime.allocator import tune_allocator


def main() -> None:
    length, precision, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    spec = importlib.util.spec_from_file_location("old_template", path)
    old = importlib.util.module_from_spec(spec)
    sys.modules["old_template"] = old
    spec.loader.exec_module(old)

    class OldTemplateEmbedding(old.TemplateEmbedding):
        def forward(self, pair, batch, mask_2d, out=None):
            return pair + super().forward(pair, batch, mask_2d)  # the old call site: pair + update

    alphafold.TemplateEmbedding = OldTemplateEmbedding
    tune_allocator()
    torch.set_num_threads(THREADS)
    model, flat, features = make_inputs(length, 32, 64, 1, templates=4)
    del flat
    model.set_options(Options(precision=precision))
    seen = {}

    def record(*_) -> None:
        seen.setdefault("templates", _rss("VmHWM"))

    model.alphafold_iteration.evoformer.template_embedding.register_forward_hook(record)
    _reset_peak_rss()
    model.predict(features, num_recycle=0)
    print(json.dumps({"length": length, "precision": precision, "peak_gib": round(_rss("VmHWM") / 2**30, 3),
                      "templates_peak_gib": round(seen["templates"] / 2**30, 3)}))


if __name__ == "__main__":
    main()
