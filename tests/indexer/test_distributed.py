"""Indexing on a Ray cluster: the same index as a local run, exactly once under failures.

One local Ray cluster (2 CPUs) serves the module; the two-node test starts its own with
`ray start --block` subprocesses and stops them by their ids.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faults
import numpy as np
import pytest

from xretrieve import store
from xretrieve.encoders import Encoder
from xretrieve.indexer import IndexOptions, IndexReport, index_folder
from xretrieve.store import ann

ray = pytest.importorskip("ray")

from xretrieve.indexer import distributed  # noqa: E402

os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # no usage report (subprocesses inherit it)
FAULTS_DIR = Path(faults.__file__).resolve().parent
OPTS: dict[str, Any] = {"progress": False, "batch_size": 4, "commit_every": 5}
COUNTS = ("images", "texts", "indexed", "updated", "unchanged", "failed", "encoded", "reused")


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A local Ray cluster for the module (its files in a folder of its own); its address."""
    temp = tempfile.mkdtemp(prefix="xr-ray-")  # short: Ray's socket paths must stay < 108 bytes
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="warning",
        _temp_dir=temp,
    )
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture()
def folder(world_dir: Path, tmp_path: Path) -> Path:
    """16 captioned images, one copied under another name, and one undecodable file."""
    dst = tmp_path / "media"
    shutil.copytree(world_dir / "test", dst)
    for png in sorted((world_dir / "train").glob("*.png"))[:8]:
        shutil.copy(png, dst / f"t_{png.name}")
    first = sorted(dst.glob("*.png"))[0]
    shutil.copy(first, dst / "copy_of_first.png")  # same content: encoded once
    (dst / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return dst


def _rows(idx: Path) -> tuple[list[tuple[Any, ...]], dict[tuple[Any, ...], np.ndarray]]:
    """Every live row's identity and metadata, and its vector by identity."""
    m = store.read_manifest(idx)
    rows: list[tuple[Any, ...]] = []
    vecs: dict[tuple[Any, ...], np.ndarray] = {}
    for info in m.shards:
        shard = store.load_shard(idx, info, verify=True)
        deleted = set(shard.deleted.tolist())
        got = ann.reconstruct_vectors(shard.index)
        for i, (r, vec) in enumerate(zip(shard.metadata.to_pylist(), got, strict=True)):
            if i in deleted:
                continue
            key = (r["modality"], r["path"], r["line"])
            rows.append(
                (*key, r["content_hash"], r["caption"], r["bytes"], r["width"], r["height"])
            )
            vecs[key] = vec
    return sorted(rows, key=str), vecs


def _same_index(got: Path, want: Path, *, without: str | None = None) -> None:
    """`got` holds `want`'s rows and vectors (less the file `without`), each once."""
    got_rows, got_vecs = _rows(got)
    want_rows, want_vecs = _rows(want)
    want_rows = [r for r in want_rows if r[1] != without]
    want_vecs = {k: v for k, v in want_vecs.items() if k[1] != without}
    assert got_rows == want_rows  # each file once, with the same metadata
    assert len({r[:3] for r in got_rows}) == len(got_rows)
    for key, vec in want_vecs.items():
        np.testing.assert_allclose(got_vecs[key], vec, atol=1e-5, err_msg=str(key))


def _counts(r: IndexReport) -> dict[str, int]:
    return {k: getattr(r, k) for k in COUNTS}


@pytest.fixture()
def local(folder: Path, tiny_encoder: Encoder, tmp_path: Path) -> tuple[Path, IndexReport]:
    """The folder indexed in this process: what every Ray run must give."""
    idx = tmp_path / "local"
    return idx, index_folder(folder, idx, encoder=tiny_encoder, options=IndexOptions(**OPTS))


def test_importing_the_indexer_imports_no_ray() -> None:
    code = "import sys, xretrieve.indexer, xretrieve.cli; print('ray' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_actors_by_resources() -> None:
    assert distributed.plan_actors({"CPU": 2}, [2], threads=None, wanted=None) == (1, 2, 0)
    assert distributed.plan_actors({"CPU": 64}, [32, 32], threads=None, wanted=None) == (
        16,
        4,
        0,
    )
    assert distributed.plan_actors({"CPU": 64}, [32, 32], threads=8, wanted=3) == (3, 8, 0)
    assert distributed.plan_actors({"CPU": 1}, [1], threads=None, wanted=None) == (1, 1, 0)
    assert distributed.plan_actors({"CPU": 32, "GPU": 4}, [16, 16], threads=None, wanted=None)[
        ::2
    ] == (4, 1)


def test_bad_ray_options_are_refused_before_any_write(tiny_encoder: Encoder) -> None:
    from xretrieve.errors import InputError
    from xretrieve.indexer.folder import check_options

    for bad in ({"ray": " "}, {"ray_concurrency": 0}, {"ray_concurrency": True}):
        with pytest.raises(InputError):
            check_options(IndexOptions(**bad), dim=tiny_encoder.dim)


def test_ray_gives_the_local_index(
    cluster: str, folder: Path, local: tuple[Path, IndexReport], tiny_encoder: Encoder
) -> None:
    want, want_report = local
    got = want.parent / "ray"
    report = index_folder(
        folder, got, encoder=tiny_encoder, options=IndexOptions(**OPTS, ray="auto")
    )
    _same_index(got, want)
    assert _counts(report) == _counts(want_report)
    assert report.reused >= 1 and report.failed >= 1  # the copy reused, the broken file failed
    assert report.commits > 2
    assert [(p.path, p.reason) for p in report.problems] == [
        (p.path, p.reason) for p in want_report.problems
    ]
    assert any(p.path.endswith("broken.png") for p in report.problems)
    # Nothing changed: a second run on the cluster reads nothing and embeds nothing.
    again = index_folder(
        folder, got, encoder=tiny_encoder, options=IndexOptions(**OPTS, ray="auto")
    )
    assert again.encoded == 0 and again.unchanged == report.images + report.texts


def test_killed_actor_repeated_results_and_a_file_no_worker_reads(
    cluster: str,
    folder: Path,
    local: tuple[Path, IndexReport],
    tiny_encoder: Encoder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An encoder actor dies at its second batch (once), every result arrives twice, and a
    file the driver saw is gone before any worker reads it: each other file lands once."""
    marker = tmp_path / "actor-killed"

    class DyingOnce(distributed.EncoderActor):
        calls = 0

        def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            self.calls += 1
            if self.calls == 2 and not marker.exists():
                marker.touch()
                os._exit(1)  # the actor's process dies mid-run
            return super().__call__(batch)

    real_unpack = distributed._unpack

    def twice(batch: dict[str, np.ndarray]) -> Iterator[Any]:
        got = list(real_unpack(batch))
        yield from got
        yield from got  # a retried batch delivered again

    from xretrieve.indexer import folder as folder_mod

    real_scan = folder_mod.scan_folder
    lost = sorted(folder.glob("t_*.png"))[0]

    def scan_then_lose(root: Any) -> Any:
        scan = real_scan(root)
        lost.unlink()  # the driver saw it; no worker can read it
        return scan

    monkeypatch.setattr(distributed, "EncoderActor", DyingOnce)
    monkeypatch.setattr(distributed, "_unpack", twice)
    monkeypatch.setattr(folder_mod, "scan_folder", scan_then_lose)
    want, want_report = local
    got = tmp_path / "ray"
    report = index_folder(
        folder, got, encoder=tiny_encoder, options=IndexOptions(**OPTS, ray="auto")
    )
    assert marker.exists()  # the actor was killed, and Ray retried its batch
    reasons = {Path(p.path).name: p.reason for p in report.problems}
    assert reasons[lost.name].startswith("cannot read: No such file or directory")
    assert distributed.SHARED_FS in reasons[lost.name]
    _same_index(got, want, without=lost.name)
    expect = _counts(want_report)
    expect.update(
        images=expect["images"] - 1,
        indexed=expect["indexed"] - 1,
        encoded=expect["encoded"] - 1,
        failed=expect["failed"] + 1,
    )
    assert _counts(report) == expect


CLI_KILLED = """
import runpy, sys
sys.path.insert(0, sys.argv[1])
import faults
faults.kill_at(sys.argv[2])
sys.argv = ["xretrieve", *sys.argv[3:]]
runpy.run_module("xretrieve.cli", run_name="__main__", alter_sys=True)
"""


def _images_only(folder: Path, dst: Path) -> Path:
    dst.mkdir()
    for png in sorted(folder.glob("*.png")):
        if png.name != "broken.png":
            shutil.copy(png, dst / png.name)
    return dst


def test_killed_driver_resumes_from_its_last_commit(
    cluster: str, folder: Path, tiny_encoder: Encoder, tmp_path: Path
) -> None:
    """The `xretrieve index --ray` command, SIGKILLed right after its first commit."""
    images = _images_only(folder, tmp_path / "images")
    want = tmp_path / "local"
    index_folder(images, want, encoder=tiny_encoder, options=IndexOptions(**OPTS))
    idx = tmp_path / "idx"
    args = ["index", images, "--index", idx, "--model", "xr-tiny", "--pretrained", "none"]
    args += ["--device", "cpu", "--batch-size", "2", "--commit-every", "3", "--ray", cluster]
    r = subprocess.run(
        [sys.executable, "-c", CLI_KILLED, FAULTS_DIR, "after-manifest:1", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"},
    )
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert store.read_manifest(idx).generation == 1  # killed right after its first commit
    # Run again (in this process, on the same cluster): it resumes from that commit.
    opts = IndexOptions(progress=False, batch_size=2, commit_every=3, ray=cluster)
    report = index_folder(images, idx, encoder=tiny_encoder, options=opts)
    assert report.unchanged >= 3 and report.failed == 0  # the first commit was kept
    assert report.unchanged + report.indexed == report.images
    _same_index(idx, want)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_two_node_cluster(
    folder: Path,
    local: tuple[Path, IndexReport],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cli,  # type: ignore[no-untyped-def]
) -> None:
    """A head and a second node (1 CPU each): the actor on one, the decoding on the other.

    With one CPU a node, the one encoder actor takes a node's CPU and the decoding tasks can
    only run on the other, so the run finishes only when both nodes work.
    """
    exe = Path(sys.executable).with_name("ray")
    port = _free_port()
    address = f"127.0.0.1:{port}"
    temp = tempfile.mkdtemp(prefix="xr-ray-")  # short: Ray's socket paths must stay < 108 bytes
    common = ["--num-cpus", "1", "--temp-dir", temp, "--block", "--disable-usage-stats"]
    # Token authentication on, with a token of the test's own: the nodes and the driver must
    # agree (Ray >= 2.52 turns it on by itself when ~/.ray/auth_token exists, but only for
    # `ray start`, so a driver without RAY_AUTH_MODE would be refused).
    token = Path(temp) / "auth_token"
    token.write_text(secrets.token_hex(32))
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    for k, v in auth.items():
        monkeypatch.setenv(k, v)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> None:
        # A session of its own: its process group is swept at the end, and only it.
        procs.append(
            subprocess.Popen(
                [str(exe), "start", *args, *common],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )

    try:
        start("--head", "--port", str(port), "--include-dashboard=false")
        deadline = time.monotonic() + 60
        while True:  # the head's GCS listens: the second node can join
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        start("--address", address, "--resources", '{"node2": 1}')
        idx = tmp_path / "two"
        args = ["index", folder, "--index", idx, "--model", "xr-tiny", "--pretrained", "none"]
        args += ["--device", "cpu", "--batch-size", "4", "--commit-every", "5"]
        with monkeypatch.context() as m:  # a driver without the auth mode is refused, in words
            m.delenv("RAY_AUTH_MODE")
            r = cli(*args, "--ray", address, "--json")
        assert r.returncode == 2, r.stderr
        assert "RAY_AUTH_MODE=token" in r.stderr.splitlines()[-1]
        assert not idx.exists(), sorted(p.name for p in idx.rglob("*"))
        r = cli(*args, "--ray", address, "--json")
        assert r.returncode == 0, r.stderr
        want, want_report = local
        _same_index(idx, want)
        report = json.loads(r.stdout)
        assert {k: report[k] for k in COUNTS} == _counts(want_report)
    finally:
        for p in reversed(procs):  # `ray start --block` stops its node's processes on SIGTERM
            p.send_signal(signal.SIGTERM)
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=30)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)  # what outlived its node (agents)
        shutil.rmtree(temp, ignore_errors=True)
