"""Training: batches of a prepared corpus, one Lightning task, `fit`, the one fold loop,
and multi-device launching."""
