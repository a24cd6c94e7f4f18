#!/usr/bin/env bash
# The GPU check: the real-GPU tests (tests/gpu) and the GPU benchmark (scripts/bench_gpu.py), for
# a machine with an NVIDIA GPU and NO network, where PyTorch and torchvision are installed.
#
#   bash scripts/gpu_check.sh [WHEEL_DIR]
#
# Without a GPU (no nvidia-smi, or torch sees no CUDA) it prints "SKIP: no NVIDIA GPU" and exits
# 0. Otherwise it makes a venv with --system-site-packages (the machine's torch is used; the venv
# is $XR_GPU_VENV, default /tmp/xr-gpu-venv, kept and reused by a later run), installs from
# WHEEL_DIR (pip --no-index --no-deps) the modules it lacks, installs xretrieve itself with
# --no-deps, then runs `pytest tests/gpu` and the benchmark. Everything printed also goes to
# $OUT/gpu_check.txt when $OUT is set. Budget: under 8 minutes on an H200 with 16 cores; the
# last line says the time taken. Exit status: 0 when the tests pass (or SKIP), 1 otherwise.
# XR_GPU_INSTALL_ONLY=1 stops after installing (to install from several folders, run by run).
#
# The wheel folder, built on a machine WITH network (Python and platform of the GPU machine):
#
#   pip download --only-binary=:all: --no-deps --python-version 3.11 \
#       --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 -d wheels \
#       open_clip_torch timm huggingface_hub ftfy wcwidth regex safetensors pyyaml \
#       pytest pluggy iniconfig faiss-cpu "pyarrow==17.0.0"
#
# --no-deps, because: open_clip_torch and timm require torch/torchvision (gigabytes; the machine
# has them), and faiss-gpu-cu12 requires nvidia-cublas-cu12 (~0.5 GB), which only a CUDA-12
# build of torch already brings. So the list above is the closure by hand: add whatever else
# the machine lacks (this script prints the missing modules before installing anything).
# Both --platform flags are needed: faiss-gpu-cu12 1.14 is manylinux2014 only (with
# manylinux_2_28 alone pip falls back to 1.9.0, which needs numpy<2), while pyarrow >= 18,
# duckdb, soundfile and soxr are manylinux_2_28 only.
#
# Sizes (cp311 x86_64, measured): faiss-gpu-cu12 1.14.1.post1 48.4 MB, pyarrow 26.0.1 55.0 MB
# (17.0.0: 39.9 MB), duckdb 2.0.1 24.9 MB, faiss-cpu 1.15.1 18.8 MB, hf-xet 4.3 MB (optional,
# downloads only), timm 2.8 MB, open_clip_torch 1.5 MB, soundfile 1.3 MB, huggingface_hub
# 0.9 MB, pyyaml, wcwidth, regex ~0.8 MB each, safetensors 0.5 MB, the rest < 0.4 MB. The list
# above is ~68 MB: over 60 MB (a device run carries 64 MiB in all), so when pyarrow is missing
# split it over two runs, e.g. wheels-a (everything but pyarrow, ~28 MB) with
# XR_GPU_INSTALL_ONLY=1, then wheels-b (pyarrow 17.0.0, ~40 MB); the venv is kept in between.
# tests/gpu and the benchmark need open_clip (+ timm, huggingface_hub, ftfy, wcwidth, regex,
# safetensors, yaml), faiss, pyarrow (xretrieve.store imports it) and pytest; duckdb, bm25s,
# soundfile, soxr, typer, rich and tqdm are only checked and reported (the rest of xretrieve).
#
# faiss-gpu-cu12 vs faiss-cpu: PyPI's faiss-gpu-cu12 (1.14.1.post1) holds kernels for compute
# capability 7.0 and 8.0 only (sm_70/sm_80 cubins, no PTX), so it runs on V100/A100/A10/L4/L40
# but not on an H100/H200 (sm_90); it also loads only beside CUDA-12 libraries (a cu12 torch).
# Put faiss-gpu-cu12 in the folder for such a GPU, else faiss-cpu: the script takes
# faiss-gpu-cu12 when it imports, falls back to faiss-cpu (and says so), and probes a GPU search
# in a separate process before using it: the FAISS GPU tests and benchmark part are skipped,
# with the reason printed, when the probe fails. The benchmark then still prints a torch
# matmul + top-k flat search on the GPU as the reference of what the GPU can do.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS="${1:-}"
PY="${PYTHON:-python3}"
VENV="${XR_GPU_VENV:-/tmp/xr-gpu-venv}"
START=$SECONDS
DEADLINE=$((SECONDS + 465)) # 7 min 45 s: the benchmark gets what the rest leaves

# module:distribution pairs: needed by tests/gpu and the benchmark, then the rest of xretrieve.
NEEDED="open_clip:open_clip_torch timm:timm huggingface_hub:huggingface_hub ftfy:ftfy
wcwidth:wcwidth regex:regex safetensors:safetensors yaml:pyyaml pyarrow:pyarrow pytest:pytest
numpy:numpy PIL:pillow packaging:packaging"
OPTIONAL="duckdb:duckdb bm25s:bm25s soundfile:soundfile soxr:soxr typer:typer rich:rich tqdm:tqdm"

have() { "$VPY" -c "import $1" >/dev/null 2>&1; }

install() { # install distribution $1 from the wheel folder; say so when it is not there
    if [[ -z "$WHEELS" ]]; then
        echo "  cannot install $1: no WHEEL_DIR given"
        return 1
    fi
    if "$VPY" -m pip install -q --no-index --find-links "$WHEELS" --no-deps "$1" 2>/dev/null; then
        echo "  installed $1 from $WHEELS"
    else
        echo "  $1 is not in $WHEELS"
        return 1
    fi
}

main() {
    echo "== gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname), $(nproc) cores"
    if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
        echo "SKIP: no NVIDIA GPU (nvidia-smi absent or sees no device)"
        return 0
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader
    if ! "$PY" -c "import torch" >/dev/null 2>&1; then
        echo "FAIL: $PY cannot import torch (this check uses the machine's PyTorch)"
        return 1
    fi
    if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "SKIP: no NVIDIA GPU (torch.cuda.is_available() is False)"
        return 0
    fi
    "$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'CUDA', torch.version.cuda,
'torchvision', torchvision.__version__, 'capability', torch.cuda.get_device_capability(0))"

    if [[ ! -x "$VENV/bin/python" ]]; then
        "$PY" -m venv --system-site-packages "$VENV"
    fi
    VPY="$VENV/bin/python"
    if [[ -n "$WHEELS" && ! -d "$WHEELS" ]]; then
        echo "FAIL: wheel folder $WHEELS not found"
        return 1
    fi

    echo "== modules"
    local missing="" pair mod dist
    for pair in $NEEDED; do
        mod="${pair%%:*}" dist="${pair#*:}"
        if ! have "$mod"; then
            missing+=" $dist"
            install "$dist" || true
        fi
    done
    if ! have faiss; then
        missing+=" faiss"
        if install faiss-gpu-cu12 && ! have faiss; then
            echo "  faiss-gpu-cu12 does not import here (it needs CUDA-12 cuBLAS): removing it"
            "$VPY" -m pip uninstall -q -y faiss-gpu-cu12
        fi
        have faiss || install faiss-cpu || true
    fi
    echo "  missing before installing:${missing:- nothing}"
    "$VPY" -c "import faiss; print('  faiss', faiss.__version__, 'GPUs', faiss.get_num_gpus()
    if hasattr(faiss, 'get_num_gpus') else 0, '(faiss-cpu build: FAISS GPU parts will skip)'
    if not hasattr(faiss, 'GpuMultipleClonerOptions') else '')" || true
    for pair in $OPTIONAL; do
        mod="${pair%%:*}" dist="${pair#*:}"
        have "$mod" || install "$dist" >/dev/null 2>&1 || echo "  optional $dist: absent (not needed here)"
    done
    # xretrieve itself, without its dependencies; without setuptools, a path file does the same.
    if ! "$VPY" -m pip install -q --no-index --no-deps --no-build-isolation -e . 2>/dev/null; then
        pwd >"$("$VPY" -c "import site; print(site.getsitepackages()[0])")/xretrieve-src.pth"
        echo "  xretrieve: on the path through xretrieve-src.pth (pip could not build it offline)"
    fi
    local still=""
    for pair in $NEEDED faiss:faiss xretrieve:xretrieve; do
        have "${pair%%:*}" || still+=" ${pair#*:}"
    done
    if [[ -n "$still" ]]; then
        echo "FAIL: still missing:$still (add them to the wheel folder; see the top of this script)"
        return 1
    fi
    if [[ "${XR_GPU_INSTALL_ONLY:-0}" == 1 ]]; then
        echo "installed; XR_GPU_INSTALL_ONLY=1: stopping here ($((SECONDS - START)) s)"
        return 0
    fi

    echo "== pytest tests/gpu"
    local tests_rc=0 bench_rc=0
    timeout 200 "$VPY" -m pytest -q -p no:cacheprovider -rs tests/gpu || tests_rc=$?

    echo "== scripts/bench_gpu.py"
    local left=$((DEADLINE - SECONDS))
    if ((left < 60)); then
        echo "bench: SKIPPED, only ${left}s left of the budget"
    else
        timeout "$left" "$VPY" scripts/bench_gpu.py || bench_rc=$?
        ((bench_rc == 124)) && echo "bench: stopped at the ${left}s left of the budget"
    fi
    echo "== gpu_check: tests rc=$tests_rc, bench rc=$bench_rc, $((SECONDS - START)) s in all"
    return $((tests_rc != 0))
}

if [[ -n "${OUT:-}" ]]; then
    mkdir -p "$OUT"
    main 2>&1 | tee "$OUT/gpu_check.txt" # pipefail: the status is main's
else
    main
fi
