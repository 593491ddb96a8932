"""The manifest of an energy index, and its energy model (the part that never changes after the build).

``manifest.json`` is the commit point of every change to an index (store.py: the files backend,
milvus.py: the database): a writer writes everything new first and the manifest last, by an
atomic rename. It names the format version, the energy model (lambda scales, Dirichlet scale
and beta, the embedding model, the build's parameters; the feature Laplacian is
``laplacian.npz``), the store that holds the items, and the bookkeeping of changes: the
generation, the live and built counts, the items added and deleted since the build.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Iterator

import scipy.sparse as sp
import torch
from filelock import FileLock, Timeout

from ..artifacts import atomic_path, atomic_write_json, read_run_manifest
from ..errors import InputError
from .build import EnergyIndex, Graph, LambdaScales

INDEX_FORMAT = "optical-energy-index"
# 2: bounded lambda scales, Dirichlet scale, ANN; 3: the Dirichlet ridge; 4: segments, deletions, stores
FORMAT_VERSION = 4
READABLE_VERSIONS = (2, 3, 4)  # 2 and 3 are a build without changes: generation 0, no ridge in 2 (beta = 0)
MODEL_FILE = "laplacian.npz"
LOCK_FILE = ".index.lock"


def model_fields(index: EnergyIndex) -> dict[str, Any]:
    """The energy model in the manifest: what search and ``index add`` need besides the items."""
    return {
        "format": INDEX_FORMAT,
        "format_version": FORMAT_VERSION,
        "dim": index.dim,
        "feature_edges": int(index.graph.src.numel()),
        **index.scales.as_dict(),
        "dirichlet_scale": index.dirichlet_scale,
        "dirichlet_beta": index.dirichlet_beta,
        "embedding_model": index.model,
        "params": index.params,
        "stats": index.stats,
    }


def initial_state(count: int, backend: dict[str, Any]) -> dict[str, Any]:
    """The bookkeeping of a fresh build: generation 0, every row alive, nothing added or deleted."""
    return {
        "store": backend,
        "generation": 0,
        "count": count,
        "built_count": count,
        "next_row": count,
        "added_since_build": 0,
        "deleted_since_build": 0,
        "segments": [],
        "deleted": None,
    }


def changed_share(manifest: dict[str, Any]) -> float:
    """Items added plus items deleted since the build, as a share of the build's count."""
    return (manifest.get("added_since_build", 0) + manifest.get("deleted_since_build", 0)) / max(
        1, manifest.get("built_count", manifest.get("count", 1))
    )


def fail(directory: Path, problem: str, ours: bool = True) -> InputError:
    """A directory that is no usable index, with advice that works (``ours`` is kept for callers; the
    directory itself decides: build-energy rewrites only its own run or an empty directory)."""
    return InputError(f"{directory}: not a usable energy index ({problem}); {_rebuild_advice(directory)}")


def _rebuild_advice(directory: Path) -> str:
    """Rebuild in place only where build-energy may write (its own run, or an empty directory); anything
    else (files optical did not write, another command's run) is left alone."""
    run = read_run_manifest(directory)
    if run is not None and run["command"] == "index build-energy":
        return f"rebuild it with `optical index build-energy --output-dir {directory} --overwrite`"
    if directory.is_dir() and not any(directory.iterdir()):
        return f"build one there with `optical index build-energy --output-dir {directory}`"
    holds = f"an `optical {run['command']}` run" if run else "files optical did not write"
    return (
        f"it holds {holds}, which optical leaves alone: build an index in a new directory with "
        "`optical index build-energy --output-dir NEW_DIR` and search it with --index NEW_DIR"
    )


def read_manifest(directory: str | Path) -> dict[str, Any]:
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(
            f"index directory not found: {directory}; pass the --output-dir of `optical index build-energy`"
        )
    path = directory / "manifest.json"
    if not path.is_file():
        raise fail(directory, "no manifest.json", ours=False)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise fail(directory, f"manifest.json is damaged: {exc}", ours=False) from None
    if not isinstance(manifest, dict) or manifest.get("format") != INDEX_FORMAT:
        raise fail(directory, f"manifest.json does not describe an {INDEX_FORMAT}", ours=False)
    if manifest.get("format_version") not in READABLE_VERSIONS:
        raise fail(
            directory,
            f"format version {manifest.get('format_version')!r}, this optical reads "
            f"{', '.join(map(str, READABLE_VERSIONS))}",
        )
    if manifest.get("status", "ok") != "ok":
        raise fail(directory, f"its build did not finish (status {manifest.get('status')!r})")
    if manifest["format_version"] < 4:  # a build without changes
        manifest = {**initial_state(int(manifest["count"]), {"backend": "files"}), **manifest}
    return manifest


def commit_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    """The commit point of an add or delete: one atomic rename."""
    atomic_write_json(Path(directory) / "manifest.json", {**manifest, "format_version": FORMAT_VERSION})


@contextlib.contextmanager
def writer_lock(directory: Path) -> Iterator[None]:
    """One writer at a time (adds and deletes); readers never wait for it. An OS lock on the lock file
    (filelock: flock on POSIX, msvcrt on Windows), so a killed writer never leaves the index locked."""
    lock = FileLock(Path(directory) / LOCK_FILE)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise InputError(
            f"{directory}: another `optical index add` or `delete` is writing this index; wait for it to end"
        ) from None
    try:
        yield
    finally:
        lock.release()


def backend_of(manifest: dict[str, Any]) -> str:
    return (manifest.get("store") or {}).get("backend", "files")


def save_model(index: EnergyIndex, directory: Path) -> None:
    with atomic_path(directory / MODEL_FILE) as tmp:
        sp.save_npz(tmp, index.graph.laplacian(), compressed=True)


def read_model(directory: Path, manifest: dict[str, Any], device: str | torch.device = "cpu") -> EnergyIndex:
    """The energy model alone, as an index of no items: graph, scales, Dirichlet scale and beta."""
    try:
        laplacian = sp.load_npz(directory / MODEL_FILE)
    except Exception as exc:  # noqa: BLE001 - any parse failure means a damaged file
        raise fail(directory, f"{MODEL_FILE} is missing or damaged: {type(exc).__name__}: {exc}") from None
    dim = int(manifest["dim"])
    if laplacian.shape != (dim, dim):
        raise fail(directory, f"{MODEL_FILE} is {laplacian.shape}, expected ({dim}, {dim})")
    device = torch.device(device)
    empty = torch.zeros(0, device=device)
    return EnergyIndex(
        ids=[],
        vectors=torch.zeros(0, dim, device=device),
        graph=Graph.from_laplacian(laplacian).to(device),
        lambdas=empty,
        rayleigh=empty,
        dispersion=empty,
        dirichlet=empty,
        norm=empty,
        scales=LambdaScales(
            str(manifest["lambda_formula"]),
            float(manifest["tau"]),
            float(manifest["tau_G"]),
            float(manifest["lambda_blend"]),
        ),
        dirichlet_scale=float(manifest["dirichlet_scale"]),
        dirichlet_beta=float(manifest.get("dirichlet_beta", 0.0)),
        params=manifest.get("params", {}),
        stats=manifest.get("stats", {}),
        model=manifest.get("embedding_model"),
    )
