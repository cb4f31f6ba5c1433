"""Bringing images in: URL lists and feeds (sources), fetching and downloading, scanning a folder
into the catalog, metadata files, thumbnails, and generated sample images.
"""
