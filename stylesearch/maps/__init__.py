"""Maps of a collection: UMAP projections and map images, sprite atlases, and zero-shot tags.
"""
