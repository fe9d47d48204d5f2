"""Studies built on the trainer: multi-seed loss comparison, temperature/weight search."""
