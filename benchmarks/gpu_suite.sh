#!/usr/bin/env bash
# The GPU suite on a machine that may have no network: collect the wheels where pip works, run it there.
#
#   bash benchmarks/gpu_suite.sh download         # with network: benchmarks/gpu_wheels.txt -> .whl/ (git-ignored)
#   bash benchmarks/gpu_suite.sh run [SUITE ARGS] # on the GPU machine: .whl/ -> /tmp/site, then
#                                                 #   python3 -m benchmarks --suite gpu --out-dir "$OUT" [SUITE ARGS]
#
# `run` writes the JSON, the one-page summary, the figures and suite.log into $OUT if it is set (a device tool's
# folder that comes back), else benchmarks/results/. docs/gpu.md has the whole procedure.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"

case "${1:-}" in
  download)
    # --no-deps: the list names every package the image lacks; the target interpreter is CPython 3.12 on
    # x86-64 Linux (pure-Python wheels match any of these tags)
    "$python" -m pip download --no-deps --only-binary=:all: --python-version "${PY_VERSION:-3.12}" \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any \
      -d .whl -r benchmarks/gpu_wheels.txt
    ls -l .whl
    ;;
  run)
    shift
    site=/tmp/dpo-jax-site
    if compgen -G ".whl/*.whl" > /dev/null; then
      "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
      export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
    out="${OUT:-benchmarks/results}"
    mkdir -p "$out"
    "$python" -m benchmarks --suite gpu --out-dir "$out" "$@" 2>&1 | tee "$out/suite.log"
    exit "${PIPESTATUS[0]}"
    ;;
  *)
    echo "usage: bash benchmarks/gpu_suite.sh download | run [python -m benchmarks --suite gpu arguments]" >&2
    exit 2
    ;;
esac
