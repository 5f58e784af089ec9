"""progeo: CLIP-based visual geo-localization (ProGEO retrieval, IM2City/GEM classification)."""

__version__ = "0.1.0"
