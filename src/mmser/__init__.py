"""mmser: speech + text emotion recognition, five papers on one honest protocol."""

__version__ = "0.1.0"
