"""Which FAISS index to build: by collection size, by build time on the machine, and by memory.

`auto` picks the most accurate kind that builds in minutes and fits the memory budget
(measured on 2 CPU cores, 512-d vectors; see benchmarks/scale.py):

| vectors        | kind   | FAISS layout                    | memory per vector | why |
|----------------|--------|---------------------------------|-------------------|-----|
| < 200k         | flat   | exact search                    | 4·d bytes         | exact, < 40 ms per query |
| 200k – 300k    | hnsw   | HNSW32 graph                    | 4·d + 256 bytes   | fastest queries; its build grows to minutes beyond this |
| 300k – ~3M     | ivf    | IVF-Flat, k-means on a sample   | 4·d + 8 bytes     | builds in minutes, exact distances inside the probed lists |
| larger         | ivfsq  | IVF with 8-bit scalar codes     | d + 8 bytes       | a quarter of the memory; candidates re-ranked |
| beyond memory  | ivfpq  | OPQ + IVF-PQ (64-byte codes)    | 72 bytes          | smallest; candidates re-ranked |

The quantised kinds (ivfsq, ivfpq) also write a refine store of float16 copies (2·d bytes per
vector, on disk, memory-mapped: refine.py) that searches re-rank their candidates with; it is
not counted against the memory budget, since a search reads only its candidates' rows.

A kind is skipped when its estimated peak memory (index + training sample + one chunk of
vectors + members) exceeds the budget (default: 60% of this machine's RAM; `max_memory`
overrides it). Asking for a kind that does not fit is an error that says what would.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from ..errors import UserError

FLAT_LIMIT = 200_000
HNSW_LIMIT = 300_000
IVF_FLAT_QUANTIZER_LIMIT = 4096  # more lists than this: an HNSW coarse quantizer assigns faster
MAX_NLIST = 4096 * 4
HNSW_M = 32
PQ_BYTES = 64
OPQ_MIN_COUNT = 65_536
MAX_TRAIN = 300_000
MIN_TRAIN = 256
CHUNK = 50_000  # vectors read from the catalog and added per step


@dataclass(frozen=True)
class IndexPlan:
    kind: str
    dim: int
    count: int
    nlist: int = 0

    @property
    def trains(self) -> bool:
        return self.kind in ("ivf", "ivfsq", "ivfpq")

    @property
    def train_size(self) -> int:
        """k-means sample: 64 points per list (faiss wants 39), at least 10k, at most 300k (k-means time)."""
        return min(self.count, MAX_TRAIN, max(64 * self.nlist, 10_000)) if self.trains else 0

    def factory(self) -> str:
        """The faiss.index_factory description."""
        if self.kind == "flat":
            return "Flat"
        if self.kind == "hnsw":
            return f"HNSW{HNSW_M}"
        quantizer = f"IVF{self.nlist}" + (f"_HNSW{HNSW_M}" if self.nlist > IVF_FLAT_QUANTIZER_LIMIT else "")
        if self.kind == "ivf":
            return f"{quantizer},Flat"
        if self.kind == "ivfsq":
            return f"{quantizer},SQ8"
        m = pq_bytes(self.dim)
        rotation = f"OPQ{m}," if self.count >= OPQ_MIN_COUNT else ""  # OPQ trains 256-centroid PQs itself
        return f"{rotation}{quantizer},PQ{m}x{pq_bits(self.count)}"

    def index_bytes(self) -> int:
        per_vector = {"flat": 4 * self.dim, "hnsw": 4 * self.dim + 2 * HNSW_M * 4, "ivf": 4 * self.dim + 8,
                      "ivfsq": self.dim + 8, "ivfpq": pq_bytes(self.dim) + 8}[self.kind]
        return self.count * per_vector + self.nlist * self.dim * 4

    def peak_bytes(self) -> int:
        """Index + training sample + one chunk + members (ids and content keys) + 10% slack."""
        working = (self.train_size + min(CHUNK, self.count)) * self.dim * 4 + self.count * 24
        return int((self.index_bytes() + working) * 1.1)


def pq_bytes(dim: int) -> int:
    """Sub-quantizers of PQ: 64 for CLIP sizes, at least 4 dimensions each for small vectors."""
    return next(m for m in (PQ_BYTES, 32, 16, 8, 4, 2, 1) if dim % m == 0 and dim // m >= min(4, dim))


def pq_bits(count: int) -> int:
    """Bits per PQ code: 8 (256 centroids per sub-quantizer) once there are enough points to train them."""
    return int(max(4, min(8, math.floor(math.log2(max(2, count // 39))))))


def nlist_for(count: int) -> int:
    """About 4·sqrt(n) inverted lists (a power of two), with at least 39 training points each."""
    wanted = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(count))))
    return int(max(1, min(wanted, MAX_NLIST, count // 39)))


def memory_budget(max_memory: int | None = None) -> int:
    """Bytes an index build may use: the given cap, else 60% of physical memory."""
    if max_memory:
        return max_memory
    try:
        return int(0.6 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def _plan(kind: str, dim: int, count: int) -> IndexPlan:
    return IndexPlan(kind, dim, count, nlist_for(count) if kind in ("ivf", "ivfsq", "ivfpq") else 0)


def choose_plan(kind: str, dim: int, count: int, max_memory: int | None = None) -> IndexPlan:
    """The plan for a requested kind ("auto" chooses by the table above) within the memory budget."""
    budget = memory_budget(max_memory)
    if kind in ("ivf", "ivfsq", "ivfpq") and count < MIN_TRAIN:
        raise UserError(f"An {kind} index learns its lists from the vectors; {count} are too few (at least "
                        f"{MIN_TRAIN}).", "Use a flat index (exact search) for a collection this small.")
    if kind != "auto":
        plan = _plan(kind, dim, count)
        if plan.peak_bytes() > budget:
            fits = [k for k in ("ivfsq", "ivfpq") if _plan(k, dim, count).peak_bytes() <= budget]
            raise UserError(f"A {kind} index of {count} vectors needs about {format_bytes(plan.peak_bytes())}, "
                            f"more than the {format_bytes(budget)} allowed.",
                            f"Allow more memory, or choose {' or '.join(fits) or 'a smaller collection'}.")
        return plan
    preferred = ["flat"] if count < FLAT_LIMIT else ["hnsw"] if count < HNSW_LIMIT else []
    for candidate in [*preferred, "ivf" if count < 3_000_000 else "ivfsq", "ivfsq", "ivfpq"]:
        plan = _plan(candidate, dim, count)
        if plan.peak_bytes() <= budget:
            return plan
    raise UserError(f"No index of {count} vectors fits in {format_bytes(budget)} "
                    f"(the smallest needs {format_bytes(_plan('ivfpq', dim, count).peak_bytes())}).",
                    "Allow more memory for the index build.")


def parse_bytes(text: str) -> int:
    """'4G', '512M', '1.5GiB', '2000000' -> bytes."""
    units = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    cleaned = text.strip().lower().removesuffix("ib").removesuffix("b")
    number, unit = (cleaned[:-1], cleaned[-1]) if cleaned and cleaned[-1] in units else (cleaned, "")
    try:
        value = float(number) * units[unit]
    except ValueError:
        raise UserError(f"Cannot read the memory size {text!r}.", "Write it like 4G, 512M or 1.5GiB.") from None
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"Memory size {text!r} must be positive.")
    return int(value)


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
