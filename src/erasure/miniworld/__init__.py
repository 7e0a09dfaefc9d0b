"""The miniworld: a procedural world with known ground truth, and the miniature model trained on it."""
