#!/usr/bin/env bash
# Install the external search tools af2cpu runs (HMMER, HH-suite, Kalign, MMseqs2) when they are missing, and a C++
# compiler: af2cpu builds its attention kernels with it (model/csrc), and torch.compile (runtime.compile) needs one.
# As root on Debian/Ubuntu this uses apt-get; otherwise it prints exactly what to install and fails.
set -euo pipefail
missing_pkgs=()
command -v jackhmmer >/dev/null 2>&1 && command -v hmmsearch >/dev/null 2>&1 || missing_pkgs+=(hmmer)
command -v hhblits >/dev/null 2>&1 && command -v hhsearch >/dev/null 2>&1 || missing_pkgs+=(hhsuite)
command -v kalign >/dev/null 2>&1 || missing_pkgs+=(kalign)
command -v mmseqs >/dev/null 2>&1 || missing_pkgs+=(mmseqs2)
command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 || missing_pkgs+=(g++)
if [ ${#missing_pkgs[@]} -eq 0 ]; then
  echo "tools: jackhmmer, hhblits, hhsearch, hmmsearch, kalign, mmseqs, a C++ compiler found"
  exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "tools: installing ${missing_pkgs[*]} with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing_pkgs[@]}" >/dev/null
  exit 0
fi
echo "tools: missing ${missing_pkgs[*]}." >&2
echo "  Debian/Ubuntu: sudo apt-get install ${missing_pkgs[*]}" >&2
echo "  conda:         conda install -c bioconda -c conda-forge hmmer hhsuite kalign3 mmseqs2 cxx-compiler" >&2
exit 1
