"""GEM (IM2City) side: candidate places, labelled image lists, prompt templates and metrics."""

from progeo.geo.labelled_images import LabelledImages, country_labels, detect_flavour, match_places, read_labelled_images
from progeo.geo.metrics import (
    DEFAULT_THRESHOLDS_KM,
    EARTH_RADIUS_KM,
    CountryConfusion,
    country_confusion,
    geo_metrics,
    haversine_km,
    median_km,
    share_within_km,
    topk_accuracy,
    topk_accuracy_ranked,
)
from progeo.geo.places import Place, PlaceList, nearest_places, place_key, read_places_csv, world_cities
from progeo.geo.templates import (
    CITY_TEMPLATES,
    COUNTRY_TEMPLATES,
    default_templates,
    load_templates,
    render_texts,
    validate_templates,
)

__all__ = [
    "LabelledImages", "country_labels", "detect_flavour", "match_places", "read_labelled_images",
    "DEFAULT_THRESHOLDS_KM", "EARTH_RADIUS_KM", "CountryConfusion", "country_confusion", "geo_metrics",
    "haversine_km", "median_km", "share_within_km", "topk_accuracy", "topk_accuracy_ranked",
    "Place", "PlaceList", "nearest_places", "place_key", "read_places_csv", "world_cities",
    "CITY_TEMPLATES", "COUNTRY_TEMPLATES", "default_templates", "load_templates", "render_texts",
    "validate_templates",
]
