"""Metrics, result tables, figures, and the report stage that puts the papers side by side."""
