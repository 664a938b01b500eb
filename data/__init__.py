"""Input pipelines, table readers and the small data shipped for offline runs and tests."""
