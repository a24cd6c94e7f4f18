"""Indexing on a Ray cluster: the images of a run read, decoded and embedded by Ray Data.

The rules it keeps:

- **The driver decides, the cluster embeds.** Scanning, planning (new, changed, renamed,
  deleted: `known`, `passes.plan_media`), deduplication by content, reuse of known vectors,
  counting, commits and the final merge stay on the driver, in the same loop as a local run
  (`passes.media_pass`). Only the files to read travel: `(index, path, name)` rows of the
  pass's todo list.
- **Two stages.** Ray tasks (`prepare_batch`, one CPU each) read, hash, decode and preprocess
  a batch with the driver's own transform; a fixed pool of actors (`EncoderActor`, one CPU
  and `ACTOR_MEMORY` each, or one GPU: never fused with the decoding stage) builds the
  encoder once each, from the model source the index records (name, pretrained, precision),
  refuses weights whose fingerprint is not the driver's, and embeds. Results stream back to
  the driver in batches (`iter_batches`) while the cluster works on the next ones.
- **Known content is not decoded.** The content hashes the index already holds go to every
  task once (`ray.put`, a sorted array read in place); such a file is hashed, not decoded.
- **Bad files never stop a run.** A file that cannot be read or decoded comes back as a row
  with its reason, reported as a local run reports it; a file the driver saw but a worker
  cannot read says that media paths must be readable from every worker.
- **Exactly once.** A killed actor is restarted and its batch retried: Ray Data's actor
  pools do so by default (``max_restarts=-1``, ``max_task_retries=-1``; passing them is
  deprecated since Ray 2.60), a lost decoding task is retried by Ray. A result that arrives
  twice is dropped by the driver (first wins). Rows land only through the driver's commits,
  so a killed driver resumes from its last commit.
- **Ray is optional.** `ray` is imported here only, and only inside functions: importing
  `xretrieve.indexer` never imports it. Captions and sounds are indexed on the driver.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from typing import Any

import numpy as np

from xretrieve._fs import display_path
from xretrieve.errors import (
    InputError,
    ModelError,
    ModelMismatchError,
    XRetrieveError,
)
from xretrieve.indexer.passes import Decoded, Kind, Todo
from xretrieve.indexer.run import Run

__all__ = [
    "ACTOR_MEMORY",
    "ACTOR_THREADS",
    "SHARED_FS",
    "EncoderActor",
    "connect",
    "image_results",
    "plan_actors",
    "prepare_batch",
]

#: Most blocks the todo list is cut into (about one encoder batch each, below this).
MAX_BLOCKS = 4096
#: Default encoder threads per actor on CPU nodes (at most a node's cores).
ACTOR_THREADS = 4
#: Ray memory each encoder actor reserves, for its model. It also keeps decoding a stage of
#: its own: Ray Data fuses a task stage into the next actor stage when they ask for the same
#: resources, and decoding would then wait for the encoder in the same process.
ACTOR_MEMORY = 1 << 30
#: Why a worker may fail to read a file that the driver found.
SHARED_FS = (
    "media paths must be readable at the same path from every Ray worker (a shared filesystem)"
)

_MISMATCH = "mismatch:"
_MODEL = "model:"


@contextlib.contextmanager
def connect(address: str) -> Iterator[Any]:
    """The `ray` module, connected: to `address`, or (``auto``) a running cluster or a new one.

    A connection made here is closed on exit; one the caller made is left as it is.
    """
    try:
        import ray
        import ray.data  # configures its loggers now, not in the middle of a run
    except ImportError as e:
        raise InputError("indexing on a Ray cluster needs Ray: pip install 'xretrieve[ray]'") from e
    if not isinstance(address, str) or not address.strip():
        raise InputError(f"Ray address must be auto or host:port, got {address!r}")
    if ray.is_initialized():
        yield ray
        return
    quiet: dict[str, Any] = {"log_to_driver": False, "logging_level": "warning"}
    try:
        if address == "auto":
            try:
                ray.init(address="auto", **quiet)
            except ConnectionError:  # no cluster running: start one on this machine
                ray.init(include_dashboard=False, **quiet)
        else:
            ray.init(address=address, **quiet)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise InputError(
            f"cannot connect to the Ray cluster at {address}: {e}{_auth_hint()}"
        ) from e
    try:
        yield ray
    finally:
        ray.shutdown()


def _auth_hint() -> str:
    """What to try when a connection fails and this process has no Ray auth mode of its own.

    Ray (>= 2.52) has `ray start` turn token authentication on by itself when
    ``~/.ray/auth_token`` exists, but a driver only when RAY_AUTH_MODE says so.
    """
    if os.environ.get("RAY_AUTH_MODE"):
        return ""
    return (
        " (a cluster with token authentication also needs RAY_AUTH_MODE=token here, and its"
        " token in RAY_AUTH_TOKEN or ~/.ray/auth_token)"
    )


def plan_actors(
    resources: dict[str, float],
    node_cpus: list[float],
    *,
    threads: int | None,
    wanted: int | None,
) -> tuple[int, int | None, int]:
    """(actors, encoder threads per actor, GPUs per actor) for a cluster's resources.

    With GPUs: one actor per GPU. Without: `threads` each (default `ACTOR_THREADS`, at most a
    node's cores), as many as the cluster's CPUs hold, leaving at least one CPU for decoding.
    An actor reserves one CPU: its threads share the cores with the decoding tasks, as the
    encoder and the decode threads of a local run do.
    """
    gpus = int(resources.get("GPU", 0))
    if gpus > 0:
        return (wanted or gpus), threads, 1
    cpus = int(resources.get("CPU", 1))
    per = threads or max(1, min(ACTOR_THREADS, int(max(node_cpus, default=1))))
    return (wanted or max(1, min(cpus // per, cpus - 1))), per, 0


_REFS: dict[str, Any] = {}  # objects the driver put, by ref, once per worker process


def _cached(ref: Any) -> Any:
    """`ray.get(ref)`, once per worker process."""
    import ray

    key = ref.hex()
    if key not in _REFS:
        if len(_REFS) >= 8:  # another run's objects
            _REFS.clear()
        _REFS[key] = ray.get(ref)
    return _REFS[key]


def _known(shas: np.ndarray, sha: str) -> bool:
    if not len(shas):
        return False
    want = sha.encode()
    i = int(np.searchsorted(shas, want))
    return i < len(shas) and bytes(shas[i]) == want


def prepare_batch(
    batch: dict[str, np.ndarray], *, known: Any, preprocess: Any, target: int
) -> dict[str, np.ndarray]:
    """A Ray task: read, hash, decode and preprocess a batch of files; errors become rows."""
    from xretrieve.errors import MediaError
    from xretrieve.media.image import content_hash, decode_image

    shas_known = _cached(known)
    pre = _cached(preprocess)
    n = len(batch["index"])
    sha, error, pixels = [""] * n, [""] * n, [b""] * n
    width, height = np.zeros(n, np.int64), np.zeros(n, np.int64)
    shape = np.zeros((n, 3), np.int64)
    for k in range(n):
        path, name = bytes(batch["path"][k]), str(batch["name"][k])
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError as e:
            error[k] = f"cannot read: {e.strerror} (on {socket.gethostname()}; {SHARED_FS})"
            continue
        sha[k] = content_hash(data)
        if _known(shas_known, sha[k]):
            continue  # its stored vector is reused: no decoding
        try:
            dec = decode_image(data, path=name, target_size=target)
            x = np.asarray(pre(dec.image), dtype=np.float32)
        except MediaError as e:
            error[k] = e.reason
            continue
        except (OSError, ValueError, RuntimeError, MemoryError) as e:
            error[k] = f"cannot preprocess: {type(e).__name__}: {e}"
            continue
        width[k], height[k] = dec.width, dec.height
        shape[k] = x.shape
        pixels[k] = x.tobytes()
    return {
        "index": np.asarray(batch["index"], np.int64),
        "sha": np.array(sha, dtype=object),
        "error": np.array(error, dtype=object),
        "width": width,
        "height": height,
        "shape": shape,
        "pixels": np.array(pixels, dtype=object),
    }


class EncoderActor:
    """A Ray actor: builds the index's encoder once, then embeds batches of prepared pixels."""

    def __init__(
        self, spec: dict[str, Any], *, batch_size: int, threads: int | None, device: str
    ) -> None:
        self.dim = int(spec["dim"])
        self.fatal = ""
        self.encoder: Any = None
        host = socket.gethostname()
        try:
            from xretrieve.encoders import ModelSpec, load_encoder

            want = ModelSpec.from_dict(spec)
            if threads and device == "cpu":
                import torch

                torch.set_num_threads(threads)
            enc = load_encoder(
                want.name,
                pretrained=want.pretrained,
                device=device,
                batch_size=batch_size,
                audio=False,
                precision=want.precision,
                threads=threads,
            )
            if enc.spec.fingerprint != want.fingerprint:
                self.fatal = (
                    f"{_MISMATCH}the Ray worker on {host} loaded {want.name} with weights "
                    f"{enc.spec.fingerprint}, not the driver's {want.fingerprint}: every node "
                    "must see the same model files"
                )
            self.encoder = enc
        except XRetrieveError as e:
            self.fatal = (
                f"{_MODEL}a Ray worker on {host} cannot load the model: {e} (model files "
                "must be readable at the same path from every worker)"
            )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Embed the rows that carry pixels; pass the others (known, failed) through."""
        n = len(batch["index"])
        vectors = np.zeros((n, self.dim), np.float32)
        encoded = np.zeros(n, bool)
        if not self.fatal:
            rows = [k for k in range(n) if len(batch["pixels"][k])]
            if rows:
                import torch

                pixels = np.stack(
                    [
                        np.frombuffer(batch["pixels"][k], np.float32).reshape(batch["shape"][k])
                        for k in rows
                    ]
                )
                vectors[rows] = self.encoder.encode_pixels(torch.from_numpy(pixels))
                encoded[rows] = True
        return {
            "index": batch["index"],
            "sha": batch["sha"],
            "error": batch["error"],
            "width": batch["width"],
            "height": batch["height"],
            "vector": vectors,
            "encoded": encoded,
            "fatal": np.array([self.fatal] * n, dtype=object),
        }


def _unpack(batch: dict[str, np.ndarray]) -> Iterator[Decoded]:
    """The driver's side: a batch of results as `Decoded`s (or the worker's fatal error)."""
    for k in range(len(batch["index"])):
        fatal = str(batch["fatal"][k])
        if fatal.startswith(_MISMATCH):
            raise ModelMismatchError(fatal[len(_MISMATCH) :])
        if fatal:
            raise ModelError(fatal[len(_MODEL) :])
        error = str(batch["error"][k])
        if error:
            yield Decoded(int(batch["index"][k]), error=error)
        elif bool(batch["encoded"][k]):
            facts = {"width": int(batch["width"][k]), "height": int(batch["height"][k])}
            vector = np.array(batch["vector"][k], dtype=np.float32)  # a copy: batches are views
            yield Decoded(int(batch["index"][k]), str(batch["sha"][k]), facts, vector=vector)
        else:
            yield Decoded(int(batch["index"][k]), str(batch["sha"][k]))  # known content


def image_results(run: Run, kind: Kind, todo: Todo) -> Iterator[Decoded]:
    """A `passes.Source`: the todo images read, decoded and embedded on the Ray cluster."""
    if kind.modality != "image":
        raise InputError(f"only images are indexed on a Ray cluster, not {kind.modality}")
    if not todo:
        return
    with connect(run.options.ray or "auto") as ray:
        log = logging.getLogger("ray.data")
        level = log.level
        log.setLevel(logging.ERROR)  # its start and finish lines: the run reports its own
        try:
            yield from _stream(ray, run, todo)
        finally:
            log.setLevel(level)


def _stream(ray: Any, run: Run, todo: Todo) -> Iterator[Decoded]:
    """Build the two stages over the todo list; yield the results as they come back."""
    opts, encoder = run.options, run.encoder
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the run's own bar counts the files
    ctx.print_on_execution_start = False
    shas = sorted(run.known.vectors) if not opts.full else []
    known = ray.put(np.array([s.encode() for s in shas], dtype="S64"))
    preprocess = ray.put(encoder.preprocess)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    actors, threads, gpus = plan_actors(
        ray.cluster_resources(),
        [float(n.get("Resources", {}).get("CPU", 0)) for n in nodes],
        threads=opts.torch_threads,
        wanted=opts.ray_concurrency,
    )
    size = opts.batch_size
    items = [
        {"index": i, "path": os.fsencode(f.fspath), "name": display_path(f.rel)}
        for i, (f, _) in enumerate(todo)
    ]
    blocks = max(1, min(MAX_BLOCKS, -(-len(items) // size)))
    ds = ray.data.from_items(items, override_num_blocks=blocks)
    ds = ds.map_batches(
        prepare_batch,
        batch_size=size,
        batch_format="numpy",
        fn_kwargs={"known": known, "preprocess": preprocess, "target": encoder.spec.image_size},
        num_cpus=1,
    )
    ds = ds.map_batches(
        EncoderActor,
        batch_size=size,
        batch_format="numpy",
        fn_constructor_kwargs={
            "spec": encoder.spec.to_dict(),
            "batch_size": size,
            "threads": threads,
            "device": "cuda" if gpus else "cpu",
        },
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=1,
        num_gpus=gpus,
        memory=ACTOR_MEMORY,
    )
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            yield from _unpack(batch)
    except ray.exceptions.RayError as e:
        raise XRetrieveError(
            f"the Ray cluster failed the run ({type(e).__name__}: {str(e)[:500]}); "
            "run it again: it resumes from the last commit"
        ) from e
