#!/usr/bin/env bash
# The GPU measurements of the fused kernel sums (issue 5), in priority order. Each stage fits
# in one 10-minute command on a lent H100/H200; run them in order and stop when time runs out.
#
#   bash benchmarks/gpu_session.sh check     # compiled fused kernels vs float64 on the device
#   bash benchmarks/gpu_session.sh targets   # the four targets (kernel sums at 1M, d=64, grad
#                                            # of MMD^2 memory, RFF Sobolev step TFLOP/s)
#   bash benchmarks/gpu_session.sh tiles     # fused tile sizes at n = 1M (tuning)
#   bash benchmarks/gpu_session.sh sweep     # the default GPU sweep of kernel_sums.py
#
# Results (JSON, logs) go to $OUT (default benchmarks/results). No install step: the device
# image has jax (0.11.x with the CUDA plugin), flax, optax, chex and pytest; the package is
# used from the source tree through PYTHONPATH. ott-jax is not there (no internet): carry it
# as wheels (see ../.library/device/README.md) to add the ott_online rows.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

case "${1:-}" in
  check)
    $PY -c "import jax; print('jax', jax.__version__, jax.devices())"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
    # interpret mode off: on a GPU backend the tests run the compiled Triton kernels
    $PY -m pytest -q -x -p no:cacheprovider tests/test_pallas.py tests/test_ops.py \
      2>&1 | tee "$OUT/gpu_tests.log"
    ;;
  targets)
    # 1-3: Gaussian kernel sums, d = 2 and 64, n = m = 64k and 1M; blocked / fused / plain JAX;
    # the grad_of_mmd2 rows carry the compiled temp bytes (target 3: < 1 GB at 1M)
    $PY benchmarks/kernel_sums.py --kernels gaussian --impls blocked pallas plain_jax_chunked \
      --d 2 64 --n 65536 1048576 --max-run-s 60 --out "$OUT/kernel_sums_gpu_targets.json"
    # 4: one RFF Sobolev step at m = 1024, n = 1M (model TFLOP/s vs the fp32 peak)
    $PY benchmarks/flow_steps.py --steppers sobolev_rff mmd_flow --n 262144 1048576 \
      --out "$OUT/flow_steps_gpu.json"
    ;;
  tiles)
    for bs in "64 64" "128 64" "64 128" "128 128" "256 64"; do
      # shellcheck disable=SC2086
      $PY benchmarks/kernel_sums.py --kernels gaussian --impls pallas --ops matvec grad_matvec \
        --d 2 16 --n 1048576 --pallas-block-size $bs \
        --out "$OUT/kernel_sums_gpu_tiles_${bs/ /x}.json"
    done
    ;;
  sweep)
    $PY benchmarks/kernel_sums.py --impls blocked pallas plain_jax_chunked \
      --out "$OUT/kernel_sums_gpu.json"
    ;;
  *)
    echo "usage: $0 check|targets|tiles|sweep" >&2
    exit 2
    ;;
esac
