"""sdfn: Self-distilled Dynamic Fusion Network for language-based fashion retrieval."""

__version__ = "0.1.0"
