"""Files on disk: atomic writes and TensorFlow checkpoint files (paths, completeness, state).

The lowest layer of the project after TensorFlow itself: every package may import it, and it
imports nothing of the project.
"""
