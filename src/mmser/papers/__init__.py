"""Each paper's experiment: its items, systems, runners, tables and exported predictor,
built on `mmser.models` and `mmser.training`."""
