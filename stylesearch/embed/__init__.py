"""Embedding: the one model choice, open_clip loading, the embedding run, ONNX export, the tokenizer
port, and the encoders (local torch, ONNX Runtime, Ray, query encoders) behind one interface.
"""
