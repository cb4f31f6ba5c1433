"""Encoders behind one interface (base.py): local torch, ONNX Runtime towers, Ray, pixel
preprocessing, and query encoders. Backends are chosen in embed/backends.py.
"""
