"""progeo: CLIP-based visual geo-localization (ProGEO retrieval, IM2City/GEM classification)."""

__version__ = "0.1.0"

# Models (lazy: importing progeo stays light; torch/open_clip load on first use).
_MODEL_EXPORTS = ("load_model", "build_model", "save_model", "GeoLocalizer", "ClipTextEncoder", "PromptLearner", "load_clip")


def __getattr__(name):
    if name in _MODEL_EXPORTS:
        import progeo.models

        return getattr(progeo.models, name)
    if name == "Localizer":  # localizing new photos against an index folder
        from progeo.eval.localizer import Localizer

        return Localizer
    raise AttributeError(f"module 'progeo' has no attribute {name!r}")
