"""napari-pathviz: see what a patch classifier sees on a whole-slide image."""

__version__ = "0.1.0"
