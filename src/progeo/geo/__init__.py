"""GEM (IM2City): classify photos into candidate cities or countries (zero-shot or linear probe).

The entry points (also in :mod:`progeo`) and the types they take; everything else is imported from
its module (README "Architecture").
"""

from progeo.geo.countries import country_code, country_key, country_name
from progeo.geo.gem_report import run_gem_report
from progeo.geo.labelled_images import LabelledImages, country_labels, detect_flavour, match_places, read_labelled_images
from progeo.geo.metrics import geo_metrics, haversine_km
from progeo.geo.names import place_key
from progeo.geo.places import Place, PlaceList, load_candidate_places, nearest_places, read_places_csv, world_cities
from progeo.geo.probe import LinearProbe, load_probe
from progeo.geo.probe_fit import ProbeEvalConfig, ProbeFitConfig, evaluate_probe, fit_probe, run_probe_eval, run_probe_fit
from progeo.geo.report import ClassTable, GemRun, gem_metrics
from progeo.geo.zeroshot import ZeroShotConfig, run_zeroshot

__all__ = [
    "country_code", "country_key", "country_name", "run_gem_report",
    "LabelledImages", "country_labels", "detect_flavour", "match_places", "read_labelled_images",
    "geo_metrics", "haversine_km", "place_key",
    "Place", "PlaceList", "load_candidate_places", "nearest_places", "read_places_csv", "world_cities",
    "LinearProbe", "load_probe", "ProbeEvalConfig", "ProbeFitConfig", "evaluate_probe", "fit_probe", "run_probe_eval",
    "run_probe_fit", "ClassTable", "GemRun", "gem_metrics", "ZeroShotConfig", "run_zeroshot",
]
