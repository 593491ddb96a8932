"""Milvus backend (``store.backend: milvus``): the items live in a Milvus collection, the energy model here.

The index directory keeps what never changes after the build (manifest.json, laplacian.npz, the
run's config.yaml); the collection holds one entity per item: its row number (primary key), id,
text, labels, the vector x, the energy vector R x (R = (L + beta I)^{1/2}, ann.py: the Euclidean
neighbours of R x are the items of least Dirichlet energy, so the database's own ANN index over it
gives candidates for ENERGY), lambda, E, G, x^T L x, ||x|| and the generation that wrote it.

``store.uri`` null is Milvus Lite, the embedded engine (package ``milvus-lite``): a local database
``milvus.db`` inside the index directory, opened by one process at a time (a second waits up to
``store.open_timeout`` seconds). ``http://HOST:19530`` reaches a Milvus server or cluster with the
same client (``pymilvus``), where many readers and a writer work at once.

Atomic changes without transactions: a search filters ``generation <= G`` (G: the manifest's
generation) and leaves out the manifest's ``pending_deletes``. An add inserts its entities with
generation G + 1 (invisible until committed), then commits the manifest; a delete commits the
manifest with the rows as pending deletes (invisible from then on), then deletes them from the
collection and commits again without them. A writer killed at any moment leaves the index of G or
of G + 1; the next writer removes what it left (entities of a generation above G, pending deletes).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch

from ..errors import InputError
from . import ann as ann_mod
from .build import EnergyIndex
from .manifest import commit_manifest, read_model

DEFAULT_FILE = "milvus.db"
LITE_COLLECTION = "items"
VARCHAR_BYTES = 65535  # Milvus's longest VARCHAR
ID_BYTES = 1024
INSERT_BATCH = 2000  # entities per insert call (gRPC messages stay far below Milvus's 64 MB limit at 384-d)
READ_BATCH = 16384  # Milvus's largest query window
SCALARS = ("lambda", "rayleigh", "dispersion", "dirichlet", "norm")  # the collection's fields, EnergyIndex's names
FIELD_OF = {"lambda": "lambdas"}  # collection field -> EnergyIndex field where they differ


def require_client() -> None:
    """Fail before any work (exit 2, naming the extra) when the Milvus client is not installed."""
    _pymilvus()


def _pymilvus():
    """The one place the Milvus client is imported (the ``milvus`` extra)."""
    try:
        import pymilvus  # noqa: PLC0415 - an optional extra: its one import (above)
    except ImportError:
        raise InputError(
            "store.backend=milvus needs the Milvus client: pip install 'optical[milvus]' (pymilvus, milvus-lite)"
        ) from None
    # its query iterator logs a malformed warning (with a stack) on every Milvus Lite read: keep stderr to ours
    logging.getLogger("pymilvus").setLevel(logging.ERROR)
    return pymilvus


def _release_lite(path: str) -> None:
    """Stop this process's Milvus Lite engine of ``path`` (the one place ``milvus_lite`` is imported).

    Milvus Lite keeps its engine, and its lock on the database, for the life of the process even after
    the client closes; released here, another process (a search beside an add) can open the database."""
    try:
        from milvus_lite.server_manager import server_manager_instance  # noqa: PLC0415 - Milvus Lite's one import
    except ImportError:  # a server URI needs no Milvus Lite
        return
    server_manager_instance.release_server(path)


def resolve_uri(directory: Path, uri: Optional[str]) -> str:
    """A server URI as given; a local database path relative to the index directory; null = milvus.db in it."""
    if uri and re.match(r"^[a-z]+://", uri):
        return uri
    path = Path(uri) if uri else Path(DEFAULT_FILE)
    return str(path if path.is_absolute() else (Path(directory) / path).resolve())


def is_lite(uri: str) -> bool:
    return not re.match(r"^[a-z]+://", uri)


def collection_name(directory: Path, uri: str, name: Optional[str]) -> str:
    """The configured name; in an embedded database of its own, ``items``; on a server, one per index directory."""
    if name:
        return name
    if is_lite(uri):
        return LITE_COLLECTION
    place = str(Path(directory).resolve())
    slug = re.sub(r"[^A-Za-z0-9_]", "_", Path(place).name)[:40]
    return f"optical_{slug}_{hashlib.sha256(place.encode('utf-8')).hexdigest()[:8]}"


class Connection:
    """An open client and the index's collection; ``with Connection.open(...) as db`` closes it."""

    def __init__(self, client: Any, collection: str, uri: str):
        self.client, self.collection, self.uri = client, collection, uri

    @classmethod
    def open(cls, store: dict[str, Any], directory: Path, timeout: float) -> "Connection":
        pymilvus = _pymilvus()
        uri = resolve_uri(directory, store.get("uri"))
        deadline = time.monotonic() + timeout
        while True:
            try:
                client = pymilvus.MilvusClient(uri)
                break
            except Exception as exc:  # noqa: BLE001 - Milvus Lite's lock held by another process surfaces as this
                if not is_lite(uri) or time.monotonic() >= deadline:
                    raise InputError(
                        f"cannot open the Milvus database {uri}: {type(exc).__name__}: {exc}"
                        + ("; another process may hold it (raise store.open_timeout)" if is_lite(uri) else "")
                    ) from None
                time.sleep(0.2)
        if client.has_collection(store["collection"]):
            client.load_collection(store["collection"])  # a restarted engine starts with it released
        return cls(client, store["collection"], uri)

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()
        if is_lite(self.uri):
            _release_lite(self.uri)

    # -- the collection

    def create(self, dim: int, ann_kind: str) -> None:
        DataType = _pymilvus().DataType
        client = self.client
        if client.has_collection(self.collection):
            client.drop_collection(self.collection)
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("row", DataType.INT64, is_primary=True)
        schema.add_field("id", DataType.VARCHAR, max_length=ID_BYTES)
        schema.add_field("generation", DataType.INT64)
        for name in SCALARS:
            schema.add_field(name, DataType.FLOAT)
        schema.add_field("text", DataType.VARCHAR, max_length=VARCHAR_BYTES)
        schema.add_field("labels", DataType.JSON)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("energy_vector", DataType.FLOAT_VECTOR, dim=dim)
        client.create_collection(self.collection, schema=schema, consistency_level="Strong")
        self.ann_kind = ann_kind

    def build_indexes(self, ann_kind: str, n: int) -> str:
        """The database's ANN index over R x (HNSW; IVF_FLAT from ``build.ann_ivf_from``; FLAT for ann none)."""
        params = self.client.prepare_index_params()
        kind = {"hnsw": "HNSW", "ivf": "IVF_FLAT", "none": "FLAT"}[ann_kind]
        settings = {"HNSW": {"M": ann_mod.HNSW_M, "efConstruction": ann_mod.HNSW_EF_CONSTRUCTION}, "FLAT": {}}
        lists = max(1, min(65536, round(ann_mod.IVF_LISTS_PER_SQRT_N * n**0.5)))
        settings = settings.get(kind, {"nlist": lists})
        params.add_index("energy_vector", index_type=kind, metric_type="L2", params=settings)
        params.add_index("vector", index_type="FLAT", metric_type="IP")  # read back only; Milvus loads indexed fields
        self.client.create_index(self.collection, params)
        self.client.load_collection(self.collection)
        return kind

    def insert(self, index: EnergyIndex, rows: np.ndarray, generation: int, root: np.ndarray, progress=None) -> None:
        vectors = index.vectors.cpu().numpy().astype(np.float32, copy=False)
        scalars = {name: getattr(index, FIELD_OF.get(name, name)).cpu().numpy().astype(float) for name in SCALARS}
        for start in range(0, len(index), INSERT_BATCH):
            stop = min(len(index), start + INSERT_BATCH)
            energy = ann_mod.transform(vectors[start:stop], root)
            batch = []
            for i in range(start, stop):
                batch.append(
                    {
                        "row": int(rows[i]),
                        "id": _fit(index.ids[i], ID_BYTES),
                        "generation": generation,
                        **{name: float(values[i]) for name, values in scalars.items()},
                        "text": _fit(index.texts[i], VARCHAR_BYTES) if index.texts is not None else "",
                        "labels": list(index.labels[i]) if index.labels is not None else [],
                        "vector": vectors[i],
                        "energy_vector": energy[i - start],
                    }
                )
            self.client.insert(self.collection, batch)
            if progress:
                progress(stop - start)
        # seal the new segments: a search over growing (unflushed) segments scans them without the ANN index,
        # measured 1.2 s against 0.1 s per query on 5,000 x 384 in Milvus Lite
        self.client.flush(self.collection)

    def delete(self, expression: str) -> None:
        self.client.delete(self.collection, filter=expression)

    def read(self, expression: str, fields: list[str]) -> Iterator[list[dict]]:
        """Every entity matching ``expression``, in batches."""
        iterator = self.client.query_iterator(
            self.collection, batch_size=READ_BATCH, filter=expression, output_fields=fields
        )
        try:
            while True:
                batch = iterator.next()
                if not batch:
                    return
                yield batch
        finally:
            iterator.close()

    def search(self, probes: np.ndarray, m: int, expression: str, fields: list[str], ef: int, nprobe: int) -> list:
        params = {"params": {"ef": max(ef, m), "nprobe": nprobe}}
        return self.client.search(
            self.collection,
            data=[p for p in probes],
            anns_field="energy_vector",
            limit=m,
            filter=expression,
            output_fields=fields,
            search_params=params,
        )


def _fit(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes at a character boundary (Milvus's VARCHAR limit)."""
    data = text.encode("utf-8")
    return text if len(data) <= limit else data[:limit].decode("utf-8", errors="ignore")


def visible(manifest: dict[str, Any], extra: str = "") -> str:
    """The filter of what generation G of the index holds: committed rows, pending deletes left out."""
    expression = f"generation <= {int(manifest['generation'])}"
    pending = manifest.get("pending_deletes") or []
    if pending:
        expression += f" and row not in [{', '.join(str(int(r)) for r in pending)}]"
    return expression + (f" and {extra}" if extra else "")


def open_connection(directory: Path, manifest: dict[str, Any], timeout: float) -> Connection:
    return Connection.open(manifest["store"], directory, timeout)


# ---------------------------------------------------------------------------------------
# Build, read, change


def write_build(
    index: EnergyIndex, directory: Path, section: Any, ann_kind: str, progress: Optional[Callable] = None
) -> dict[str, Any]:
    """Create the collection of a fresh build and insert every item with generation 0; returns the store fields."""
    uri = resolve_uri(directory, section.uri)
    store = {"backend": "milvus", "uri": section.uri, "collection": collection_name(directory, uri, section.collection)}
    root = ann_mod.metric_root(index.dirichlet_metric(index.vectors.device))
    with Connection.open(store, directory, section.open_timeout) as db:
        db.create(index.dim, ann_kind)
        db.insert(index, np.arange(len(index)), 0, root, progress)
        store["index_type"] = db.build_indexes(ann_kind, len(index))
    return store


def _entities_to_index(model: EnergyIndex, entities: list[dict], device: torch.device) -> EnergyIndex:
    """An EnergyIndex over ``entities`` (in the order given) with the energy model of ``model``."""
    column = lambda name: torch.tensor([e[name] for e in entities], dtype=torch.float32, device=device)
    vectors = np.asarray([e["vector"] for e in entities], dtype=np.float32).reshape(len(entities), model.dim)
    texts = [e.get("text", "") for e in entities]
    labels = [_labels(e.get("labels")) for e in entities]
    return model.with_items(
        [str(e["id"]) for e in entities],
        torch.from_numpy(vectors).to(device),
        {FIELD_OF.get(name, name): column(name) for name in SCALARS},
        texts if any(texts) else None,
        labels if any(labels) else None,
    )


def _labels(value: Any) -> list[str]:
    if isinstance(value, str):
        value = json.loads(value)
    return [str(v) for v in value or []]


ALL_FIELDS = ["row", "id", "text", "labels", "vector", *SCALARS]


def load_all(directory: Path, manifest: dict[str, Any], device: str | torch.device = "cpu", timeout: float = 60.0):
    """Every visible item, in row order: exact search over the database's items."""
    device = torch.device(device)
    model = read_model(directory, manifest, device)
    entities: list[dict] = []
    with open_connection(directory, manifest, timeout) as db:
        for batch in db.read(visible(manifest), ALL_FIELDS):
            entities.extend(batch)
    entities.sort(key=lambda e: e["row"])
    return _entities_to_index(model, entities, device)


def live_rows(directory: Path, manifest: dict[str, Any], timeout: float = 60.0) -> tuple[list[str], np.ndarray]:
    pairs: list[tuple[int, str]] = []
    with open_connection(directory, manifest, timeout) as db:
        for batch in db.read(visible(manifest), ["row", "id"]):
            pairs.extend((int(e["row"]), str(e["id"])) for e in batch)
    pairs.sort()
    return [i for _, i in pairs], np.asarray([r for r, _ in pairs], dtype=np.int64)


def finish_pending(db: Connection, directory: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """What a killed writer left: entities above the committed generation, deletes committed but not done."""
    db.delete(f"generation > {int(manifest['generation'])}")
    pending = manifest.get("pending_deletes") or []
    if pending:
        db.delete(f"row in [{', '.join(str(int(r)) for r in pending)}]")
        manifest = {**manifest, "pending_deletes": []}
        commit_manifest(directory, manifest)
    return manifest


def append(
    directory: Path,
    manifest: dict[str, Any],
    items: EnergyIndex,
    replaced: np.ndarray,
    timeout: float,
    progress: Optional[Callable] = None,
) -> dict[str, Any]:
    """Insert ``items`` as generation G + 1 and retire ``replaced`` rows; returns the committed manifest."""
    with open_connection(directory, manifest, timeout) as db:
        manifest = finish_pending(db, directory, manifest)
        generation = int(manifest["generation"]) + 1
        first = int(manifest["next_row"])
        root = ann_mod.metric_root(items.dirichlet_metric(items.vectors.device))
        db.insert(items, np.arange(first, first + len(items)), generation, root, progress)
        state = {
            **manifest,
            "generation": generation,
            "next_row": first + len(items),
            "count": int(manifest["count"]) + len(items) - int(replaced.size),
            "added_since_build": int(manifest.get("added_since_build", 0)) + len(items),
            "deleted_since_build": int(manifest.get("deleted_since_build", 0)) + int(replaced.size),
            "pending_deletes": [int(r) for r in replaced],
        }
        commit_manifest(directory, state)
        return finish_pending(db, directory, state)


def delete(directory: Path, manifest: dict[str, Any], rows: np.ndarray, timeout: float) -> dict[str, Any]:
    """Retire ``rows``: committed as pending deletes first (invisible at once), then deleted from the collection."""
    with open_connection(directory, manifest, timeout) as db:
        manifest = finish_pending(db, directory, manifest)
        state = {
            **manifest,
            "generation": int(manifest["generation"]) + 1,
            "count": int(manifest["count"]) - int(rows.size),
            "deleted_since_build": int(manifest.get("deleted_since_build", 0)) + int(rows.size),
            "pending_deletes": [int(r) for r in rows],
        }
        commit_manifest(directory, state)
        return finish_pending(db, directory, state)


# ---------------------------------------------------------------------------------------
# Search: the database's ANN gives candidates for energy, rescored exactly here


class CandidateSource:
    """Candidates from the collection's ANN index over R x, with everything the exact rescoring needs."""

    def __init__(self, directory: Path, manifest: dict[str, Any], model: EnergyIndex, timeout: float):
        self.directory, self.manifest, self.model = directory, manifest, model
        self.root = ann_mod.metric_root(model.dirichlet_metric(model.vectors.device))
        self.db = open_connection(directory, manifest, timeout)

    def close(self) -> None:
        self.db.close()

    def gather(
        self, queries: torch.Tensor, m: int, ef: int, nprobe: int, windows: Optional[list[tuple[float, float]]] = None
    ) -> tuple[EnergyIndex, torch.Tensor]:
        """(the candidates of the batch as one small index, [B, m] positions in it per query; -1 pads a short list).

        ``windows``: per query, the lambda range the database filter keeps (one search call per query)."""
        probes = ann_mod.transform(queries, self.root)
        if windows is None:
            results = self.db.search(probes, m, visible(self.manifest), ALL_FIELDS, ef, nprobe)
        else:
            results = []
            for probe, (low, high) in zip(probes, windows):
                expression = visible(self.manifest, f"lambda >= {low!r} and lambda <= {high!r}")
                results.extend(self.db.search(probe[None, :], m, expression, ALL_FIELDS, ef, nprobe))
        position: dict[int, int] = {}
        entities: list[dict] = []
        table = np.full((len(results), m), -1, dtype=np.int64)
        for q, hits in enumerate(results):
            for j, hit in enumerate(hits):
                entity = hit["entity"]
                row = int(entity["row"])
                if row not in position:
                    position[row] = len(entities)
                    entities.append(entity)
                table[q, j] = position[row]
        device = queries.device
        return _entities_to_index(self.model, entities, device), torch.from_numpy(table).to(device)
