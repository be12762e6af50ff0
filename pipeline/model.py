"""Load the job's CLIP model through open_clip, the one path for every kind of weights.

`model` is an open_clip model name or a path to a model config JSON; `pretrained` is
an open_clip tag (downloaded and cached on the user's machine), a local checkpoint
path (works offline; loaded with weights_only=True), or `none` (random weights,
seeded so that every run and every process of a job builds the same model).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.preprocess import Preprocess, from_open_clip
from pipeline.settings import JobSettings

log = logging.getLogger(__name__)

RANDOM_WEIGHTS_SEED = 0


def hub_reachable(timeout: float = 3.0) -> bool:
    """Can the model hub be reached at all? Asked once, in seconds rather than minutes.

    The hub is huggingface_hub's ENDPOINT (HF_ENDPOINT, set by users behind a mirror),
    not a fixed huggingface.co: probing another host would call a reachable mirror
    unreachable, or the reverse.
    """
    import socket
    from urllib.parse import urlsplit

    import huggingface_hub.constants as hub

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    url = urlsplit(hub.ENDPOINT)
    address = (url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443))
    try:
        with socket.create_connection(address, timeout=timeout):
            return True
    except OSError:
        return False


def _go_offline_if_unreachable() -> None:
    """Without this, huggingface_hub retries for about a minute before using its cache."""
    import huggingface_hub.constants as hub

    if not hub.HF_HUB_OFFLINE and not hub_reachable():
        log.info("model hub unreachable: using cached weights only")
        hub.HF_HUB_OFFLINE = True


@dataclass
class LoadedModel:
    model: Any  # open_clip CLIP module, eval mode
    preprocess: Preprocess
    dim: int
    transform: Any  # open_clip's own eval transform, for reference and tests


def _model_name(model: str) -> str:
    """Register a config JSON with open_clip and return the name it is known by."""
    import open_clip

    p = Path(model)
    if p.suffix == ".json":
        if not p.is_file():
            raise PipelineError(f"model config not found: {model}")
        open_clip.add_model_config(p)
        return p.stem
    if model not in open_clip.list_models() and not model.startswith(("hf-hub:", "local-dir:")):
        raise PipelineError(f"unknown model '{model}': an open_clip model name or a config .json path")
    return model


def check_weights(job: JobSettings) -> tuple[str, str | None, dict[str, Any]]:
    """Resolve (model name, pretrained, create kwargs) without loading anything.

    `scan` calls this so a typo is refused when the job is created, not hours later.
    """
    import open_clip

    name = _model_name(job.model)
    pretrained: str | None = None if job.pretrained.lower() == "none" else job.pretrained
    kwargs: dict[str, Any] = {}
    if pretrained and not os.path.isfile(pretrained):
        tag_cfg = open_clip.get_pretrained_cfg(name, pretrained)
        if not tag_cfg:
            tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none known"
            raise PipelineError(
                f"pretrained '{pretrained}' is neither a local file nor a tag of {name} (tags: {tags})"
            )
        # OpenAI's weights were trained with QuickGELU; building without it gives wrong features.
        if tag_cfg.get("quick_gelu"):
            kwargs["force_quick_gelu"] = True
    return name, pretrained, kwargs


def load_model(job: JobSettings, device: Any = "cpu") -> LoadedModel:
    import open_clip
    import torch

    name, pretrained, kwargs = check_weights(job)
    if pretrained and not os.path.isfile(pretrained):
        _go_offline_if_unreachable()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
            model, _, transform = open_clip.create_model_and_transforms(
                name, pretrained=pretrained, weights_only=True, **kwargs
            )
    except PipelineError:
        raise
    except Exception as e:  # download failures, bad checkpoints: one line for the user
        text = " ".join(str(e).split()) or type(e).__name__
        first = text if len(text) <= 200 else text[:197] + "..."
        if pretrained and not os.path.isfile(pretrained):
            raise PipelineError(
                f"cannot get pretrained weights '{pretrained}' for {name} ({first}); offline, "
                f"pass --pretrained PATH to a local checkpoint, or --pretrained none"
            ) from None
        raise PipelineError(f"cannot load model {name} with weights {job.pretrained}: {first}") from None

    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    dim = int(getattr(model.visual, "output_dim", 0) or model.text_projection.shape[1])
    return LoadedModel(model, from_open_clip(transform), dim, transform)
