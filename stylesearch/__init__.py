"""stylesearch: explore and search image collections by visual style with CLIP embeddings, and learn a
personal similarity metric from your own judgments.

The Python API (see stylesearch.api; the same functions the command line calls):

    import stylesearch
    photos = stylesearch.open("photos", root="datasets")   # or create=True
    photos.embed(model="ViT-B-32")
    photos.index()
    for hit in photos.search("film grain portrait", k=20, where="year>2000"):
        print(hit.id, hit.score, hit.path, hit.caption, hit.meta)
    photos.similar(42, k=10); photos.train(); photos.umap()
    stylesearch.datasets()

`import stylesearch` is light: the API module is loaded on first use, and the stages it calls
(store, ingest, embed, index, learn, query, maps) import numpy, torch or FAISS only inside the
functions that need them.
"""

from .errors import StyleSearchError
from .version import __version__

_API = ("open", "datasets", "Dataset", "DatasetInfo", "Hit", "IndexInfo", "MapPoint", "TrainReport")

__all__ = [*_API, "StyleSearchError", "__version__"]


def __getattr__(name: str):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'stylesearch' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
