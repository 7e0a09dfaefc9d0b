"""Detectors answer "is concept X in this image"; the miniworld detector plays CLIP/NudeNet's role."""
