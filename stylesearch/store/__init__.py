"""The store: where a dataset's files live and how they are written (paths, atomic files, locks),
the SQLite catalog and its vectors, safe image decoding, tar shards, and listing datasets.
"""
