"""GEM (IM2City) side: candidate places, labelled image lists, prompt templates and metrics."""

from progeo.geo.countries import country_code, country_key, country_name, known_countries
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
from progeo.geo.names import place_key
from progeo.geo.places import (
    Place,
    PlaceList,
    load_candidate_places,
    nearest_places,
    places_from_world,
    read_places_csv,
    world_cities,
)
from progeo.geo.features import ImageFeatures, ModelSpec, image_features, load_gem_model
from progeo.geo.gem_report import run_gem_report
from progeo.geo.probe import LinearProbe, load_probe
from progeo.geo.probe_fit import ProbeEvalConfig, ProbeFitConfig, evaluate_probe, fit_probe, run_probe_eval, run_probe_fit
from progeo.geo.report import ClassTable, GemRun, Predictions, gem_metrics, metrics_table, true_classes
from progeo.geo.templates import (
    CITY_TEMPLATES,
    COUNTRY_TEMPLATES,
    default_templates,
    load_templates,
    render_texts,
    validate_templates,
)
from progeo.geo.zeroshot import (
    ZeroShotClassifier,
    ZeroShotConfig,
    build_zeroshot_classifier,
    run_zeroshot,
)

__all__ = [
    "country_code", "country_key", "country_name", "known_countries",
    "LabelledImages", "country_labels", "detect_flavour", "match_places", "read_labelled_images",
    "DEFAULT_THRESHOLDS_KM", "EARTH_RADIUS_KM", "CountryConfusion", "country_confusion", "geo_metrics",
    "haversine_km", "median_km", "share_within_km", "topk_accuracy", "topk_accuracy_ranked",
    "Place", "PlaceList", "nearest_places", "place_key", "read_places_csv", "world_cities",
    "CITY_TEMPLATES", "COUNTRY_TEMPLATES", "default_templates", "load_templates", "render_texts",
    "validate_templates",
    "ImageFeatures", "ModelSpec", "image_features", "load_gem_model", "places_from_world", "run_gem_report",
    "LinearProbe", "load_probe", "ProbeEvalConfig", "ProbeFitConfig", "evaluate_probe", "fit_probe", "run_probe_eval",
    "run_probe_fit", "ClassTable", "GemRun", "Predictions", "gem_metrics", "metrics_table", "true_classes",
    "ZeroShotClassifier", "ZeroShotConfig", "build_zeroshot_classifier", "load_candidate_places", "run_zeroshot",
]
