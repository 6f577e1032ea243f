"""Readers and writers per source format.

Modules here only turn files into plain arrays, dask arrays and DataFrames (and back);
``slide.py`` and ``patches.py`` build the validated objects from them.
"""
