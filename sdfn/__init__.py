"""sdfn: Self-distilled Dynamic Fusion Network for language-based fashion retrieval."""

__version__ = "0.1.0"
__all__ = ["Retriever", "__version__"]


def __getattr__(name: str):
    # Imported on first use, so that `import sdfn` stays light (no torch, open_clip or faiss).
    if name == "Retriever":
        from sdfn.retrieval import Retriever

        return Retriever
    raise AttributeError(f"module 'sdfn' has no attribute '{name}'")
