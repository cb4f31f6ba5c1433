"""The refine store of a quantised index: float16 copies of its vectors, to re-rank its candidates exactly.

IVF-SQ8 and IVF-PQ rank by approximate distances; among near neighbours at almost the same
distance (1,000 variations of one picture) the quantisation error reorders them, and recall@10
falls (0.91 at 10M with SQ8). So a search asks the quantised index for `factor` × k candidates
and re-scores them with these copies (float16 keeps about 3 decimal digits: far finer than SQ8's
256 levels), as FAISS's IndexRefine does, but in a separate memory-mapped `.npy` file: a search
reads only the rows of its candidates (a few dozen pages), and loading the index reads none.

Rows are in the index's own space (raw, or a learned metric's Euclidean space) and in the order
vectors were added to the index, so a row number is the position FAISS returns from the index
inside IndexIDMap2. Indexes built before the store existed (no `refine` in the sidecar) search
without it.
"""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np

REFINED_KINDS = ("ivfsq", "ivfpq")  # the kinds whose stored codes are approximate
REFINE_FACTOR = 4  # candidates fetched per result to be re-ranked (k=10: 40 rows read)
DTYPE = np.float16


class RefineWriter:
    """Writes the rows of a refine store in add order, a chunk at a time (memory: one chunk), to an open
    binary file; the header says `count` rows of `dim`, and `close` checks that many were written."""

    def __init__(self, file, count: int, dim: int):
        self.file, self.count, self.dim, self.written = file, count, dim, 0
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(DTYPE)), "fortran_order": False,
                  "shape": (count, dim)}
        np.lib.format.write_array_header_1_0(file, header)

    def add(self, vectors: np.ndarray) -> None:
        rows = np.ascontiguousarray(vectors, dtype=DTYPE)
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise ValueError(f"refine rows of shape {rows.shape}, expected (*, {self.dim})")
        self.file.write(rows.tobytes())
        self.written += len(rows)

    def close(self) -> None:
        if self.written != self.count:
            raise ValueError(f"refine store has {self.written} rows, its header says {self.count}")


def copy_rows(source: np.ndarray, writer: RefineWriter, chunk: int) -> None:
    """Append the rows of an existing store (incremental builds keep the old rows, then add the new)."""
    for start in range(0, len(source), chunk):
        writer.add(source[start:start + chunk])


def open_store(file: Path, count: int, dim: int) -> np.ndarray | None:
    """The store memory-mapped read-only (random access: no read-ahead), or None when it is missing
    or does not match the index (then searches run on the quantised codes alone)."""
    try:
        rows = np.load(file, mmap_mode="r")
    except (OSError, ValueError, EOFError):
        return None
    if rows.shape != (count, dim) or rows.dtype != DTYPE:
        return None
    raw = getattr(rows, "_mmap", None)
    if raw is not None and hasattr(mmap, "MADV_RANDOM"):
        raw.madvise(mmap.MADV_RANDOM)
    return rows


def prefetch(store: np.ndarray, rows: np.ndarray) -> None:
    """Ask the kernel for the pages of these rows at once (MADV_WILLNEED), so a cold store is read with
    the reads in parallel rather than one page fault after another; nothing for an in-memory array."""
    raw = getattr(store, "_mmap", None)
    if raw is None or not hasattr(mmap, "MADV_WILLNEED"):
        return
    row_bytes = store.shape[1] * store.itemsize
    base = int(getattr(store, "offset", 0)) % mmap.ALLOCATIONGRANULARITY  # numpy maps from a granule boundary
    for row in rows.tolist():
        start = base + row * row_bytes
        page = start - start % mmap.PAGESIZE
        raw.madvise(mmap.MADV_WILLNEED, page, start + row_bytes - page)


def rerank(store: np.ndarray, queries: np.ndarray, positions: np.ndarray, k: int,
           l2: bool) -> tuple[np.ndarray, np.ndarray]:
    """(scores, positions) of the k best candidates per query, re-scored with the stored rows: inner
    product, or minus the squared L2 distance when `l2`; rows padded with (-inf, -1) when fewer."""
    out_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    out_pos = np.full((len(queries), k), -1, dtype=np.int64)
    for row, (query, candidates) in enumerate(zip(queries, positions)):
        candidates = np.unique(candidates[candidates >= 0])  # sorted: the file is read in order
        if not len(candidates):
            continue
        prefetch(store, candidates)
        vectors = np.asarray(store[candidates], dtype=np.float32)
        scores = vectors @ query
        if l2:
            scores = 2 * scores - np.einsum("ij,ij->i", vectors, vectors) - float(query @ query)
        best = np.argsort(-scores, kind="stable")[:k]
        out_scores[row, :len(best)], out_pos[row, :len(best)] = scores[best], candidates[best]
    return out_scores, out_pos
