"""The names a user chooses from, in one light module.

The core modules validate against these and the frontends offer them (CLI enums, HTTP
schemas), without importing numpy or the modules that do the work, so `--help` and shell
completion stay fast.
"""

INDEX_KINDS = ("auto", "flat", "hnsw", "ivf", "ivfsq", "ivfpq")
THUMB_FORMATS = {"jpeg": ".jpg", "webp": ".webp", "png": ".png"}  # thumbnail format -> file extension
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
EMBED_BACKENDS = ("auto", "torch", "onnx", "onnx-int8")  # auto: onnx on the CPU, torch on a GPU
EMBED_ENGINES = ("local", "ray")  # where encoding runs: this process, or a Ray cluster
LABEL_STRATEGIES = ("random", "uncertain")
METRIC_KINDS = ("diagonal", "lowrank", "auto")  # auto: low-rank only where it agrees significantly better
COORD_FORMATS = ("csv", "json", "parquet")
ATLAS_ORDERS = ("path", "umap")
LIST_FORMATS = ("txt", "csv", "tsv", "jsonl")
OUTPUT_FORMATS = ("table", "json", "jsonl", "tsv", "paths", "paths0")  # paths0: NUL-separated, like find -print0
