"""Index directory: lambdas.parquet, vectors.npy, laplacian.npz, ann.faiss (optional) and manifest.json.

Every file is written atomically; ``manifest.json`` goes last, so a directory without a
valid manifest is an unfinished or foreign one. The manifest may also be a run manifest
(``optical index build-energy`` merges the index fields into it); then its status must be ok.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp
import torch

from ..artifacts import atomic_path, atomic_write_json, read_run_manifest
from ..errors import InputError
from . import ann as ann_mod
from .build import EnergyIndex, Graph, LambdaScales

FORMAT = "optical-energy-index"
FORMAT_VERSION = 3  # 2: bounded lambda scales, Dirichlet scale and the optional ANN structure; 3: the Dirichlet ridge
READABLE_VERSIONS = (2, 3)  # a version-2 index has no ridge: beta = 0 is exactly how it was built
FILES = ("lambdas.parquet", "vectors.npy", "laplacian.npz")


def manifest_fields(index: EnergyIndex) -> dict[str, Any]:
    """What ``manifest.json`` says about an index (also merged into a run manifest)."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "count": len(index),
        "dim": index.dim,
        "feature_edges": int(index.graph.src.numel()),
        **index.scales.as_dict(),
        "dirichlet_scale": index.dirichlet_scale,
        "dirichlet_beta": index.dirichlet_beta,
        "ann": ann_mod.describe(index.ann) if index.ann is not None else None,
        "embedding_model": index.model,
        "params": index.params,
        "stats": index.stats,
        "files": list(FILES) + ([ann_mod.FILE] if index.ann is not None else []),
    }


def save_index(index: EnergyIndex, directory: str | Path, manifest: bool = True) -> dict[str, Any]:
    """Write the index files into ``directory``; returns the manifest fields."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "id": pa.array(index.ids, pa.string()),
            "lambda": index.lam.cpu().numpy().astype(np.float64),
            "E": index.E.cpu().numpy().astype(np.float64),
            "G": index.G.cpu().numpy().astype(np.float64),
            "norm": index.norm.cpu().numpy().astype(np.float64),
            "xLx": index.xLx.cpu().numpy().astype(np.float64),
        }
    )
    if index.texts is not None:
        table = table.append_column("text", pa.array(index.texts, pa.string()))
    with atomic_path(directory / "lambdas.parquet") as tmp:
        pq.write_table(table, tmp)
    with atomic_path(directory / "vectors.npy") as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, index.vectors.cpu().numpy().astype(np.float32), allow_pickle=False)
    with atomic_path(directory / "laplacian.npz") as tmp:
        sp.save_npz(tmp, index.graph.laplacian(), compressed=True)
    if index.ann is not None:
        ann_mod.save_ann(index.ann, directory / ann_mod.FILE)
    elif (directory / ann_mod.FILE).exists():
        (directory / ann_mod.FILE).unlink()  # an older build's structure would not match these items
    fields = manifest_fields(index)
    if manifest:
        atomic_write_json(directory / "manifest.json", fields)
    return fields


def _fail(directory: Path, problem: str) -> InputError:
    return InputError(f"{directory}: not a usable energy index ({problem}); {_rebuild_advice(directory)}")


def _rebuild_advice(directory: Path) -> str:
    """Advice that works: rebuild in place only where build-energy may write (its own run, or an empty
    directory); anything else (files optical did not write, another command's run) is left alone."""
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
        raise _fail(directory, "no manifest.json")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(directory, f"manifest.json is damaged: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _fail(directory, f"manifest.json does not describe an {FORMAT}")
    if manifest.get("format_version") not in READABLE_VERSIONS:
        raise _fail(
            directory,
            f"format version {manifest.get('format_version')!r}, this optical reads "
            f"{' and '.join(map(str, READABLE_VERSIONS))}",
        )
    if manifest.get("status", "ok") != "ok":
        raise _fail(directory, f"its build did not finish (status {manifest.get('status')!r})")
    return manifest


def load_index(directory: str | Path, device: str | torch.device = "cpu") -> EnergyIndex:
    """Read an index, checking that every file exists, parses and agrees on counts and dimensions."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    count, dim = manifest.get("count"), manifest.get("dim")
    names = manifest.get("files", FILES)
    for name in names:
        if not (directory / name).is_file():
            raise _fail(directory, f"{name} is missing")
    try:
        table = pq.read_table(directory / "lambdas.parquet").to_pandas()
        # memory-mapped (copy-on-write): ANN search touches only its candidates' rows
        vectors = np.load(directory / "vectors.npy", allow_pickle=False, mmap_mode="c")
        laplacian = sp.load_npz(directory / "laplacian.npz")
        ann = ann_mod.load_ann(directory / ann_mod.FILE) if ann_mod.FILE in names else None
    except Exception as exc:  # noqa: BLE001 - any parse failure means a damaged file
        raise _fail(directory, f"a file is damaged: {type(exc).__name__}: {exc}") from None
    missing = {"id", "lambda", "E", "G", "norm", "xLx"} - set(table.columns)
    if missing:
        raise _fail(directory, f"lambdas.parquet lacks columns {sorted(missing)}")
    if vectors.ndim != 2 or vectors.shape != (count, dim):
        raise _fail(directory, f"vectors.npy has shape {vectors.shape}, manifest says ({count}, {dim})")
    if len(table) != count:
        raise _fail(directory, f"lambdas.parquet has {len(table)} rows, manifest says {count}")
    if laplacian.shape != (dim, dim):
        raise _fail(directory, f"laplacian.npz is {laplacian.shape}, expected ({dim}, {dim})")
    if ann is not None and (ann.ntotal != count or ann.d != dim):
        raise _fail(directory, f"{ann_mod.FILE} holds {ann.ntotal} x {ann.d}, manifest says ({count}, {dim})")
    device = torch.device(device)
    column = lambda name: torch.from_numpy(table[name].to_numpy(np.float32)).to(device)  # noqa: E731
    scales = LambdaScales(
        str(manifest["lambda_formula"]),
        float(manifest["tau"]),
        float(manifest["tau_G"]),
        float(manifest["lambda_blend"]),
    )
    return EnergyIndex(
        ids=[str(i) for i in table["id"]],
        vectors=torch.from_numpy(vectors.astype(np.float32, copy=False)).to(device),
        graph=Graph.from_laplacian(laplacian).to(device),
        lam=column("lambda"),
        E=column("E"),
        G=column("G"),
        xLx=column("xLx"),
        norm=column("norm"),
        scales=scales,
        dirichlet_scale=float(manifest["dirichlet_scale"]),
        dirichlet_beta=float(manifest.get("dirichlet_beta", 0.0)),
        params=manifest.get("params", {}),
        stats=manifest.get("stats", {}),
        model=manifest.get("embedding_model"),
        texts=[str(t) for t in table["text"]] if "text" in table.columns else None,
        ann=ann,
    )


def lambda_table(index: EnergyIndex) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": index.ids,
            "lambda": index.lam.cpu().numpy(),
            "E": index.E.cpu().numpy(),
            "G": index.G.cpu().numpy(),
            "norm": index.norm.cpu().numpy(),
        }
    )
