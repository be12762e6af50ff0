"""Batch CLIP feature extraction for large video collections, as a resumable job.

Importing the package is cheap (no torch): decode workers import only what they use.
"""

__version__ = "0.1.0"
