"""Searching: query terms and the Searcher, metadata filters, and the client of a running server.
"""
