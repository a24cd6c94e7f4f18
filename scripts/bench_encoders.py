"""Encoder runtimes and precisions side by side on the CPU, measured in one run.

    .venv/bin/python scripts/bench_encoders.py                          # ViT-B-32, random weights
    .venv/bin/python scripts/bench_encoders.py --rounds 5 --threads 8
    .venv/bin/python scripts/bench_encoders.py --skip-candidates --cold-start gen:200
    .venv/bin/python scripts/bench_encoders.py --skip-candidates --skip-api --cold-start ~/photos

Three parts, each printing absolute numbers, ratios against the reference measured in the
same run, and a Markdown table at the end (the one in docs/benchmarks/bench_encoders.md):

a. candidates (skip with --skip-candidates): the image tower on one batch of preprocessed
   photo-like images (img/s) and the text tower on one batch of tokenised captions
   (texts/s), for torch fp32, torch dynamic int8 (`quantize_dynamic` on Linear), ONNX Runtime
   fp32 and dynamic int8 (QInt8 weights) on the ONNX files xretrieve's conversion writes,
   OpenVINO with the f32 and bf16 hints on the same ONNX files, and OpenVINO on NNCF's int8
   files (= xretrieve's int8). Cosine of every output row against torch fp32 (mean, 1st
   percentile). Ratios are against torch fp32.
b. the xretrieve precisions through the real API (skip with --skip-api):
   `load_encoder(..., precision=p).encode_images` on 640x480 PIL images and `.encode_texts`,
   img/s and texts/s, and single-text query latency (p50/p90); ratios against fp32.
c. --cold-start DIR (a folder of JPEGs, or gen:N to generate N 1600x1200 photo-like JPEGs):
   whole `xretrieve` processes per precision, each precision with its own fresh
   XRETRIEVE_CACHE: a first `index` (timed once: model load, remembering its spec, the tower
   conversion for bf16 unless a model folder already holds it, encoding), then alternately
   over --rounds a cold `search "a red car" -k 5` and an unchanged re-`index`; median wall
   seconds and whether torch / openvino were imported.

Every candidate is run once per round in turn (A B C ... A B C ...) and the median over
rounds is kept, so load that comes and goes on a shared machine falls on all of them alike.
All runtimes get the same thread count (default: every core this process may use). Weights
do not change speed, so the default is random weights (seeded: the same in every process).
XRETRIEVE_CACHE points at a fresh temporary folder unless --cache is given, so conversions
are made here (not timed in a and b) and nothing of the user's cache is touched; a model
folder's towers are converted inside that folder (xretrieve's rule).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from _bench_common import (
    NA,
    captions,
    cos_stats,
    default_threads,
    interleaved,
    markdown,
    median,
    percentile,
    photos,
    write_photos,
)

API_PRECISIONS = ("fp32", "bf16", "int8")
COLD_PRECISIONS = ("fp32", "bf16")
_TORCH_INT8_TEXT = (
    "open_clip's text tower does not run under torch dynamic int8 "
    "(its attention asks the quantised Linear for get_weight_dtype)"
)


@dataclass
class Candidate:
    """One runtime: a callable per tower returning the output rows (None: not measured)."""

    name: str
    image: Callable[[], Any] | None = None
    text: Callable[[], Any] | None = None
    notes: list[str] = field(default_factory=list)


# --- a. candidates ----------------------------------------------------------------------------


def _first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:160]}"


def _torch_job(module: Any, method: str, x: Any) -> Callable[[], Any]:
    import torch

    def run() -> Any:
        with torch.inference_mode():
            return getattr(module, method)(x, normalize=True).float().numpy()

    return run


def _ort_session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _ort_job(sess: Any, x: np.ndarray) -> Callable[[], Any]:
    return lambda: sess.run(None, {"x": x})[0]


def _ov_job(compiled: Any, x: np.ndarray) -> Callable[[], Any]:
    return lambda: compiled([x])[0]


def build_candidates(
    args: argparse.Namespace, threads: int, work: Path
) -> tuple[list[Candidate], dict[str, Any]]:
    """Every runtime of part a, on the same weights and the same inputs."""
    import torch

    from xretrieve.encoders import load_encoder
    from xretrieve.encoders.converted import convert_towers
    from xretrieve.encoders.sources import converted_dir

    enc = load_encoder(args.model, pretrained=args.pretrained, device="cpu", precision="fp32")
    model = enc.model.eval()
    folder = converted_dir(args.model, enc.spec.fingerprint)
    t0 = time.perf_counter()
    convert_towers(enc, folder, int8=True)
    info: dict[str, Any] = {
        "spec": enc.spec,
        "folder": folder,
        "convert_s": time.perf_counter() - t0,
    }
    pixels = enc.preprocess_images(photos(args.batch, (640, 480), seed=1))
    tokens = enc.tokenizer(captions(args.batch, seed=1))
    px = np.ascontiguousarray(pixels.numpy(), dtype=np.float32)
    tok = np.ascontiguousarray(tokens.numpy(), dtype=np.int64)

    out = [
        Candidate(
            "torch fp32",
            _torch_job(model, "encode_image", pixels),
            _torch_job(model, "encode_text", tokens),
        )
    ]

    with warnings.catch_warnings():  # quantize_dynamic is deprecated in torch 2.x, still works
        warnings.simplefilter("ignore")
        qmodel = torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8
        )
    c = Candidate("torch dynamic int8", _torch_job(qmodel, "encode_image", pixels))
    try:
        _torch_job(qmodel, "encode_text", tokens[:2])()
        c.text = _torch_job(qmodel, "encode_text", tokens)
    except Exception as e:  # the known failure; anything else is printed the same way
        c.notes.append(f"text tower not measured: {_TORCH_INT8_TEXT} [{_first_line(e)}]")
    out.append(c)

    from onnxruntime.quantization import QuantType, quantize_dynamic

    ort32 = Candidate("ONNX Runtime fp32")
    ort8 = Candidate("ONNX Runtime dynamic int8")
    for tower, x in (("image", px), ("text", tok)):
        src = folder / f"{tower}.onnx"
        setattr(ort32, tower, _ort_job(_ort_session(src, threads), x))
        dst = work / f"{tower}-ort-int8.onnx"
        try:
            with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
                quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
            setattr(ort8, tower, _ort_job(_ort_session(dst, threads), x))
        except Exception as e:
            ort8.notes.append(f"{tower} tower not measured: {_first_line(e)}")
    out += [ort32, ort8]

    import openvino as ov

    core = ov.Core()
    caps = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    info["cpu_caps"] = " ".join(str(x) for x in caps)
    # The same settings as xretrieve.encoders.converted (bf16 and int8 are its two precisions).
    # xretrieve's int8 quantises the image tower only (INT8_TOWERS); the text tower's NNCF
    # int8 is made here, as a candidate, calibrated on the benchmark's own captions.
    text_int8 = _nncf_text_int8(folder / "text.onnx", tok, work / "text-int8.xml")
    for name, files, hint in (
        ("OpenVINO f32", {"image": "image.onnx", "text": "text.onnx"}, "f32"),
        ("OpenVINO bf16 (xretrieve bf16)", {"image": "image.onnx", "text": "text.onnx"}, "bf16"),
        ("OpenVINO+NNCF int8", {"image": "image-int8.xml", "text": str(text_int8)}, "f32"),
    ):
        c = Candidate(name)
        for tower, x in (("image", px), ("text", tok)):
            compiled = core.compile_model(
                str(folder / files[tower]),
                "CPU",
                {
                    "INFERENCE_NUM_THREADS": threads,
                    "INFERENCE_PRECISION_HINT": hint,
                    "PERFORMANCE_HINT": "LATENCY",
                },
            )
            setattr(c, tower, _ov_job(compiled, x))
            if tower == "image":
                got = compiled.get_property("INFERENCE_PRECISION_HINT")
                name_of = getattr(got, "get_type_name", None)
                c.notes.append(f"compiled inference precision: {name_of() if name_of else got}")
        out.append(c)
    return out, info


def _nncf_text_int8(src: Path, tokens: np.ndarray, dst: Path) -> Path:
    """NNCF's static int8 text tower (a candidate only), calibrated on `tokens`."""
    import logging

    import nncf
    import openvino as ov

    nncf.set_log_level(logging.ERROR)
    data = nncf.Dataset([tokens[i : i + 1] for i in range(len(tokens))])
    model = ov.Core().read_model(str(src))
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        q = nncf.quantize(
            model, data, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(tokens)
        )
    ov.save_model(q, str(dst), compress_to_fp16=False)
    return dst


def run_candidates(args: argparse.Namespace, threads: int, work: Path) -> list[list[str]]:
    cands, info = build_candidates(args, threads, work)
    spec = info["spec"]
    print(f"## a. candidates: {spec.name} ({spec.image_size}px), batch {args.batch}")
    print(f"towers converted in {info['convert_s']:.1f} s into {info['folder']} (not timed)")
    print(f"OpenVINO CPU capabilities: {info['cpu_caps']}")
    results: dict[str, dict[str, tuple[float, float, float]]] = {c.name: {} for c in cands}
    for tower in ("image", "text"):
        jobs = {c.name: getattr(c, tower) for c in cands if getattr(c, tower) is not None}
        outs = {name: np.asarray(job()) for name, job in jobs.items()}  # warm-up and cosines
        ref = outs["torch fp32"]
        times = interleaved(jobs, rounds=args.rounds)
        for name, ts in times.items():
            cm, cp1 = cos_stats(ref, outs[name])
            results[name][tower] = (args.batch / median(ts), cm, cp1)
    unit = {"image": "img/s", "text": "texts/s"}
    rows = []
    for c in cands:
        r = results[c.name]
        cells = [c.name]
        for tower in ("image", "text"):
            if tower in r:
                speed, cm, cp1 = r[tower]
                ratio = speed / results["torch fp32"][tower][0]
                print(
                    f"{c.name:38s} {tower:5s} {speed:9.2f} {unit[tower]:7s} x{ratio:5.2f}  "
                    f"cos mean {cm:.5f} p1 {cp1:.5f}"
                )
                cells += [f"{speed:.1f}", f"{ratio:.2f}", f"{cm:.4f}", f"{cp1:.4f}"]
            else:
                print(f"{c.name:38s} {tower:5s} not measured")
                cells += [NA] * 4
        for note in c.notes:
            print(f"{'':38s} note: {note}")
        rows.append(cells)
    print()
    return rows


# --- b. the xretrieve precisions through the API ----------------------------------------------


def run_api(args: argparse.Namespace, threads: int) -> list[list[str]]:
    from xretrieve.encoders import load_encoder

    encs = {
        p: load_encoder(
            args.model,
            pretrained=args.pretrained,
            device="cpu",
            precision=p,
            threads=threads,
            batch_size=args.batch,
        )
        for p in API_PRECISIONS
    }
    images = photos(args.images, (640, 480), seed=2)
    texts = captions(args.texts, seed=2)
    queries = captions(args.queries, seed=3)
    print(
        f"## b. xretrieve API: {args.images} images 640x480, {args.texts} texts, "
        f"{args.queries} single-text queries, batch {args.batch}"
    )
    # Warm-up (conversion if missing, compilation) and the rows the cosines compare.
    img_out, txt_out = {}, {}
    for p, enc in encs.items():
        t0 = time.perf_counter()
        img_out[p] = enc.encode_images(images[: args.batch])
        txt_out[p] = enc.encode_texts(texts[: args.batch])
        print(f"{p}: {type(enc).__name__}, first use {time.perf_counter() - t0:.1f} s")
    img_t = interleaved(
        {p: functools.partial(e.encode_images, images) for p, e in encs.items()},
        rounds=args.rounds,
    )
    txt_t = interleaved(
        {p: functools.partial(e.encode_texts, texts) for p, e in encs.items()},
        rounds=args.rounds,
    )
    lat: dict[str, list[float]] = {p: [] for p in encs}
    for q in queries:
        for p, enc in encs.items():
            t0 = time.perf_counter()
            enc.encode_texts([q])
            lat[p].append(1000 * (time.perf_counter() - t0))
    rows = []
    ref_i, ref_t = args.images / median(img_t["fp32"]), args.texts / median(txt_t["fp32"])
    for p in encs:
        ips, tps = args.images / median(img_t[p]), args.texts / median(txt_t[p])
        p50, p90 = percentile(lat[p], 50), percentile(lat[p], 90)
        ci, ci1 = cos_stats(img_out["fp32"], img_out[p])
        ct, ct1 = cos_stats(txt_out["fp32"], txt_out[p])
        print(
            f"{p:5s} images {ips:8.2f} img/s x{ips / ref_i:5.2f}   texts {tps:8.2f}/s "
            f"x{tps / ref_t:5.2f}   query p50 {p50:7.2f} ms p90 {p90:7.2f} ms   "
            f"cos img {ci:.4f}/{ci1:.4f} text {ct:.4f}/{ct1:.4f} (mean/p1)"
        )
        rows.append(
            [
                p,
                f"{ips:.1f}",
                f"{ips / ref_i:.2f}",
                f"{tps:.1f}",
                f"{tps / ref_t:.2f}",
                f"{p50:.1f}",
                f"{p90:.1f}",
                f"{ci:.4f}",
                f"{ct:.4f}",
            ]
        )
    print()
    return rows


# --- c. cold start of whole processes ---------------------------------------------------------

# Runs the CLI as `python -m xretrieve.cli` does, and says at exit which heavy modules it loaded.
_WRAPPER = (
    "import atexit, json, runpy, sys\n"
    "def _said():\n"
    "    m = {k: k in sys.modules for k in ('torch', 'openvino', 'open_clip')}\n"
    "    sys.stderr.write('\\n@@modules ' + json.dumps(m) + '\\n')\n"
    "atexit.register(_said)\n"
    "sys.argv = ['xretrieve', *sys.argv[1:]]\n"
    "runpy.run_module('xretrieve.cli', run_name='__main__', alter_sys=True)\n"
)


@dataclass
class Run:
    seconds: float
    rc: int
    modules: dict[str, bool]
    stderr: str


def run_cli(cli_args: list[str], env: dict[str, str]) -> Run:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _WRAPPER, *cli_args], env=env, capture_output=True, text=True
    )
    dt = time.perf_counter() - t0
    modules: dict[str, bool] = {}
    for line in proc.stderr.splitlines():
        if line.startswith("@@modules "):
            modules = json.loads(line[len("@@modules ") :])
    return Run(dt, proc.returncode, modules, proc.stderr)


def _imported(runs: list[Run], name: str) -> str:
    seen = {r.modules.get(name) for r in runs}
    return "yes" if seen == {True} else "no" if seen == {False} else "mixed"


def run_cold(
    args: argparse.Namespace, work: Path, base_env: dict[str, str]
) -> tuple[list[list[str]], list[str]]:
    src = args.cold_start
    if src.startswith("gen:"):
        folder = work / "photos"
        n = int(src[4:])
        t0 = time.perf_counter()
        write_photos(folder, n, (1600, 1200), seed=4)
        print(f"generated {n} JPEGs 1600x1200 in {time.perf_counter() - t0:.1f} s")
    else:
        folder = Path(src).expanduser().resolve()
    n_files = sum(1 for _ in folder.rglob("*.jp*g"))
    print(f"## c. cold start: {folder} ({n_files} JPEGs), {args.rounds} rounds")
    failed: list[str] = []
    first: dict[str, Run] = {}
    index = {p: work / f"index-{p}" for p in COLD_PRECISIONS}
    # A fresh cache each: the first index starts from nothing, whatever ran before it.
    envs = {p: {**base_env, "XRETRIEVE_CACHE": str(work / f"cache-{p}")} for p in COLD_PRECISIONS}
    for p in COLD_PRECISIONS:
        cli = ["index", str(folder), "--index", str(index[p]), "--model", args.model]
        cli += ["--pretrained", args.pretrained_arg, "--precision", p, "--quiet"]
        r = run_cli(cli, envs[p])
        if r.rc != 0:
            tail = " | ".join(r.stderr.strip().splitlines()[-3:])
            failed.append(f"{p}: first index exit {r.rc}: {tail}")
            print(f"{p}: first index FAILED (exit {r.rc}): {tail}")
            continue
        first[p] = r
        print(f"{p}: first index {r.seconds:.1f} s (includes any tower conversion)")
    for p in first:  # untimed: the page cache holds every module a search reads
        run_cli(["search", "a red car", "--index", str(index[p]), "-k", "5"], envs[p])
    search: dict[str, list[Run]] = {p: [] for p in first}
    reindex: dict[str, list[Run]] = {p: [] for p in first}
    for _ in range(args.rounds):
        for p in first:
            search[p].append(
                run_cli(["search", "a red car", "--index", str(index[p]), "-k", "5"], envs[p])
            )
            reindex[p].append(run_cli(["index", str(folder), "--index", str(index[p])], envs[p]))
    rows = []
    ref = None
    for p in first:
        for what, runs in (("search", search[p]), ("re-index", reindex[p])):
            bad = [r for r in runs if r.rc != 0]
            if bad:
                tail = " | ".join(bad[0].stderr.strip().splitlines()[-3:])
                failed.append(f"{p}: {what} exit {bad[0].rc}: {tail}")
        s = median([r.seconds for r in search[p]])
        ri = median([r.seconds for r in reindex[p]])
        ref = ref or (s, ri)
        print(
            f"{p:5s} search cold median {s:6.2f} s x{s / ref[0]:5.2f} "
            f"(torch {_imported(search[p], 'torch')}, openvino "
            f"{_imported(search[p], 'openvino')})   re-index median {ri:6.2f} s "
            f"x{ri / ref[1]:5.2f} (torch {_imported(reindex[p], 'torch')})"
        )
        rows.append(
            [
                p,
                f"{first[p].seconds:.1f}",
                f"{s:.2f}",
                f"{s / ref[0]:.2f}",
                _imported(search[p], "torch"),
                f"{ri:.2f}",
                f"{ri / ref[1]:.2f}",
                _imported(reindex[p], "torch"),
            ]
        )
    for f in failed:
        print(f"FAILED {f}")
    print()
    return rows, failed


# --- main -------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="ViT-B-32", help="architecture name or model folder")
    ap.add_argument("--pretrained", default="none", help="pretrained tag/file, or none")
    ap.add_argument("--batch", type=int, default=32, help="batch size (a, b)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="default: every core allowed")
    ap.add_argument("--images", type=int, default=64, help="images encoded per round (b)")
    ap.add_argument("--texts", type=int, default=256, help="texts encoded per round (b)")
    ap.add_argument("--queries", type=int, default=60, help="single-text queries (b)")
    ap.add_argument("--skip-candidates", action="store_true", help="skip part a")
    ap.add_argument("--skip-api", action="store_true", help="skip part b")
    ap.add_argument("--cold-start", default=None, metavar="DIR|gen:N", help="run part c")
    ap.add_argument("--cache", type=Path, default=None, help="XRETRIEVE_CACHE (default: temp)")
    args = ap.parse_args()
    args.pretrained_arg = args.pretrained
    args.pretrained = None if args.pretrained.lower() == "none" else args.pretrained
    if Path(args.model).expanduser().is_dir():
        args.model = str(Path(args.model).expanduser().resolve())

    threads = args.threads or default_threads()
    work = Path(tempfile.mkdtemp(prefix="xr-bench-enc-"))
    cache = (args.cache or work / "cache").resolve()
    os.environ["XRETRIEVE_CACHE"] = str(cache)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}

    import torch

    torch.set_num_threads(threads)
    print(
        f"# bench_encoders: model {args.model} pretrained {args.pretrained_arg}, "
        f"{threads} threads, {args.rounds} rounds, torch {torch.__version__}"
    )
    print()
    tables = []
    failed: list[str] = []
    try:
        if not args.skip_candidates:
            rows = run_candidates(args, threads, work)
            tables.append(
                (
                    f"Encoder runtimes, {args.model}, batch {args.batch}, {threads} threads "
                    "(x = ratio to torch fp32 in the same run; cos vs torch fp32)",
                    [
                        "runtime",
                        "img/s",
                        "x",
                        "cos img mean",
                        "cos img p1",
                        "texts/s",
                        "x",
                        "cos text mean",
                        "cos text p1",
                    ],
                    rows,
                )
            )
        if not args.skip_api:
            rows = run_api(args, threads)
            tables.append(
                (
                    f"xretrieve precisions (load_encoder), {args.model}, 640x480 images, "
                    f"{threads} threads (x = ratio to fp32 in the same run)",
                    [
                        "precision",
                        "img/s",
                        "x",
                        "texts/s",
                        "x",
                        "query p50 ms",
                        "query p90 ms",
                        "cos img",
                        "cos text",
                    ],
                    rows,
                )
            )
        if args.cold_start:
            rows, failed = run_cold(args, work, env)
            tables.append(
                (
                    f"Whole processes, {args.model} (median wall s over {args.rounds} rounds; "
                    "x = ratio to fp32)",
                    [
                        "precision",
                        "first index s",
                        "search cold s",
                        "x",
                        "torch loaded",
                        "unchanged re-index s",
                        "x",
                        "torch loaded",
                    ],
                    rows,
                )
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)  # a --cache folder lies elsewhere and stays
    for title, header, rows in tables:
        print(f"**{title}**")
        print()
        print(markdown(header, rows))
        print()
    if failed:
        print(json.dumps({"failed": failed}, indent=1))


if __name__ == "__main__":
    main()
