"""stylesearch: explore and search image collections by visual style with CLIP embeddings.

The library is split by concern (storage, catalog, scan, models, embed, index, search,
metric, projection, atlas, download, transform); heavy dependencies are imported lazily.
"""

__version__ = "0.1.0"

from .errors import StyleSearchError  # noqa: E402

__all__ = ["StyleSearchError", "__version__"]
