#!/usr/bin/env bash
# `make demo`: fold the bundled ubiquitin example on the bundled mini databases.
# Uses the official AlphaFold2 parameters when they are in the params folder; otherwise says how to get
# them and runs with untrained random weights (params=random), which exercises every stage for real.
set -euo pipefail
bin=${VENV:-.venv}/bin
params_dir=${AF2CPU_PARAMS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/af2cpu/params}
models="[model_1_ptm,model_3_ptm]"
if [ -f "$params_dir/params_model_1_ptm.npz" ] && [ -f "$params_dir/params_model_3_ptm.npz" ]; then
  params=official
else
  echo "demo: no official AlphaFold2 parameters in $params_dir."
  echo "demo: get them with: $bin/af2cpu params download --dest $params_dir   (about 5 GB)"
  echo "demo: running now with params=random: UNTRAINED weights, every stage real, the structure meaningless."
  params=random
fi
"$bin/af2cpu" doctor "params=$params" "model.names=$models" || true
"$bin/af2cpu" predict af2cpu/data/examples/ubiquitin.fasta --out out/demo "params=$params" "model.names=$models"
echo "demo: outputs in out/demo/1UBI_A (ranked_0.pdb, plots/, ...); open them with af2cpu.load_result('out/demo/1UBI_A')"
