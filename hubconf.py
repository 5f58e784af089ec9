"""torch.hub entry point: ``torch.hub.load(REPO_DIR, "progeo", path_or_name=..., source="local")``.

``path_or_name`` is a saved progeo model (folder or ``.safetensors`` file) or a backbone spec
such as ``RN50:openai`` / ``tiny-vit`` for a new (untrained head) descriptor model.
"""

import os
import sys

dependencies = ["torch", "open_clip", "safetensors", "numpy"]

_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "src")
if os.path.isdir(_SRC) and _SRC not in sys.path:
    sys.path.insert(0, _SRC)


def progeo(path_or_name: str, device: str = "cpu", **kwargs):
    """A ready GeoLocalizer: ``model.describe(images) -> np.ndarray (B x D)``.

    Extra keyword arguments go to ``progeo.build_model`` when a backbone name is given
    (``fc_output_dim``, ``image_size``, ``weights``, ``offline``...).
    """
    from progeo.models.checkpoints import load_model
    from progeo.models.geolocalizer import build_model

    if os.path.exists(os.path.expanduser(str(path_or_name))):
        if kwargs:
            raise TypeError(f"options {sorted(kwargs)} only apply when building from a backbone name")
        return load_model(os.path.expanduser(str(path_or_name)), device=device)
    return build_model(str(path_or_name), device=device, **kwargs)
