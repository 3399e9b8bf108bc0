"""Corpus -> manifest: synthesising the default corpus, loading real ones, checking audio,
and the protocols that assign folds."""
