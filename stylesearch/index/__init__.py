"""FAISS indexes: which kind to build (plan), streamed builds (build), and loading one to search (load).
"""
