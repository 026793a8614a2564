#!/usr/bin/env bash
# `make demo`: fold the bundled ubiquitin example on the bundled mini databases.
# `make demo-complex` (`scripts/demo.sh complex`): fold the bundled haemoglobin alpha/beta dimer with
# AlphaFold-Multimer (one model, two predictions; chains paired by species on the mini databases).
# Uses the official AlphaFold2 parameters when they are in the params folder; otherwise says how to get
# them and runs with untrained random weights (params=random), which exercises every stage for real.
set -euo pipefail
bin=${VENV:-.venv}/bin
params_dir=${AF2CPU_PARAMS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/af2cpu/params}
if [ "${1:-monomer}" = complex ]; then
  fasta=af2cpu/data/examples/hemoglobin_ab.fasta out=out/demo-complex target=hemoglobin_ab
  presets=(model_1_multimer_v3)
  # Three recycles as the monomer demo (AlphaFold-Multimer's own default is up to 20, stopping early at
  # 0.5 Å: drop the override for real runs), so the demo takes minutes on a laptop.
  models=("model.multimer_names=[model_1_multimer_v3]" "model.num_predictions_per_model=2" "model.num_recycle=3")
else
  fasta=af2cpu/data/examples/ubiquitin.fasta out=out/demo target=1UBI_A
  presets=(model_1_ptm model_3_ptm)
  models=("model.names=[model_1_ptm,model_3_ptm]")
fi
params=official
for preset in "${presets[@]}"; do
  [ -f "$params_dir/params_$preset.npz" ] || params=random
done
if [ "$params" = random ]; then
  echo "demo: no official AlphaFold2 parameters (${presets[*]}) in $params_dir."
  echo "demo: get them with: $bin/af2cpu params download --dest $params_dir   (about 5 GB)"
  echo "demo: running now with params=random: UNTRAINED weights, every stage real, the structure meaningless."
fi
"$bin/af2cpu" doctor "params=$params" "${models[@]}" || true
"$bin/af2cpu" predict "$fasta" --out "$out" "params=$params" "${models[@]}"
echo "demo: outputs in $out/$target (ranked_0.pdb, plots/, ...); open them with af2cpu.load_result('$out/$target')"
