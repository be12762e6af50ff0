"""The open_clip family: CLIP models by open_clip name or config JSON, any kind of weights.

`model` is an open_clip model name or a path to a model config JSON; `pretrained` is
an open_clip tag (downloaded and cached on the user's machine), a local checkpoint
path (works offline; loaded with weights_only=True), or `none` (random weights,
seeded so that every run and every process of a job builds the same model).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.models.base import Family, Model
from pipeline.preprocess import Geometry, Preprocess, from_open_clip
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


class OpenClipModel(Model):
    """An open_clip CLIP on one device; `module` and `transform` are open_clip's own, kept
    for references in tests and benchmarks."""

    def __init__(self, module: Any, transform: Any, device: Any, name: str = "") -> None:
        import torch

        self.module = module
        self.transform = transform
        self.name = name  # open_clip's name for it, which picks its tokenizer
        self.device = device
        self.preprocess: Preprocess = from_open_clip(transform)
        self.dim = int(getattr(module.visual, "output_dim", 0) or module.text_projection.shape[1])
        self._mean = torch.tensor(self.preprocess.mean, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.preprocess.std, device=device).view(1, 3, 1, 1)

    def encode(self, pixels: Any) -> Any:
        x = pixels.permute(0, 3, 1, 2).float()
        x.div_(255.0).sub_(self._mean).div_(self._std)  # in place: one float copy of the batch, not three
        return self.module.encode_image(x)

    def encode_text(self, texts: list[str]) -> Any:
        """open_clip's own tokenizer for the model and its text tower."""
        import open_clip
        import torch

        if not callable(getattr(self.module, "encode_text", None)):
            raise PipelineError(f"this job's model ({self.name or 'open_clip'}) has no text tower: search by --video instead")
        tokenizer = open_clip.get_tokenizer(self.name)
        with torch.inference_mode():
            return self.module.encode_text(tokenizer(texts).to(self.device)).float()


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


# Keys only OpenAI's own checkpoints have: its TorchScript models keep these ints in their
# state dict (open_clip drops them when it converts one, factory.load_state_dict).
OPENAI_ONLY_KEYS = frozenset({"input_resolution", "context_length", "vocab_size"})


def openai_layout(path: str) -> str | None:
    """What marks `path` as one of OpenAI's own checkpoints, or None when nothing does.

    A TorchScript archive (OpenAI's release format: a zip with code/ and constants.pkl)
    or a state dict holding OpenAI's JIT-only keys. A state dict saved from open_clip
    (README's offline recipe) has open_clip's keys whoever trained it, so it says
    nothing; `quickgelu_advice` covers that case. Reads the keys only (mmap), not the weights.
    """
    import zipfile

    if path.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            keys = set(f.keys())
        return "a state dict with OpenAI's JIT keys" if keys & OPENAI_ONLY_KEYS else None
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        if any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names):
            return "a TorchScript archive, OpenAI's release format"
    import torch

    try:
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception:  # noqa: BLE001 - not a checkpoint we can read: load_model words that
        return None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    keys = {str(k).removeprefix("module.") for k in sd} if isinstance(sd, dict) else set()
    return "a state dict with OpenAI's JIT keys" if keys & OPENAI_ONLY_KEYS else None


def quickgelu_advice(name: str, pretrained: str) -> tuple[int, str] | None:
    """A local checkpoint by path gets no tag, so nothing tells open_clip the weights are
    OpenAI's, which were trained with QuickGELU; built with plain GELU they give other
    features without any error. (logging level, one line), or None when nothing to say:
    the name is a -quickgelu one (or its config sets quick_gelu), or the architecture has
    no QuickGELU twin (OpenAI never released it).
    """
    import logging

    import open_clip

    cfg = open_clip.get_model_config(name) or {}
    if name.endswith("-quickgelu") or cfg.get("quick_gelu"):
        return None
    twin = f"{name}-quickgelu"
    use = f"--model {twin}" if twin in open_clip.list_models() else "a model config with \"quick_gelu\": true"
    kind = openai_layout(pretrained)
    if kind:
        return logging.WARNING, (
            f"pretrained {pretrained} is {kind}: OpenAI trained it with QuickGELU, but {name} builds plain GELU "
            f"(different features); use {use}"
        )
    if twin in open_clip.list_models():
        return logging.WARNING, (
            f"pretrained {pretrained}: a local checkpoint for {name} builds with plain GELU; if these are OpenAI's "
            f"weights (saved from pretrained='openai'), use {use}: OpenAI trained with QuickGELU"
        )
    return None


def check_weights(job: JobSettings, advise: bool = True) -> tuple[str, str | None, dict[str, Any]]:
    """Resolve (model name, pretrained, create kwargs) without loading anything.

    `scan` calls this so a typo is refused when the job is created, not hours later;
    it also says there (`advise`) when a local checkpoint may be OpenAI's built without
    QuickGELU. A run (`advise=False`) only notes that in its log.
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
    elif pretrained and (advice := quickgelu_advice(name, pretrained)):
        log.log(advice[0] if advise else logging.INFO, advice[1])
    return name, pretrained, kwargs


def load_model(job: JobSettings, device: Any = "cpu") -> OpenClipModel:
    import open_clip
    import torch

    name, pretrained, kwargs = check_weights(job, advise=False)
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
    return OpenClipModel(model, transform, device, name)


def _config_file(model: str) -> Path | None:
    """The model config JSON open_clip will build `model` from, found without importing
    open_clip (find_spec locates a package without running it)."""
    if model.endswith(".json"):
        return Path(model)
    if model.startswith(("hf-hub:", "local-dir:")) or "/" in model:
        return None
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "model_configs" / f"{model}.json"


def geometry_hint(job: JobSettings) -> Geometry | None:
    """open_clip's eval geometry from the model config alone: Resize(image_size, bicubic)
    and CenterCrop(image_size) unless the config's preprocess_cfg says otherwise. A
    pretrained tag's own preprocessing (some override it) is only known once open_clip
    is imported: the run checks this hint against the loaded model."""
    path = _config_file(job.model)
    try:
        cfg = json.loads(path.read_text()) if path is not None else None
    except (OSError, ValueError):
        return None
    if not isinstance(cfg, dict):
        return None
    size = cfg.get("vision_cfg", {}).get("image_size")
    pp = cfg.get("preprocess_cfg", {}) or {}
    if isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        return None
    interpolation, mode = pp.get("interpolation", "bicubic"), pp.get("resize_mode", "shortest")
    if mode == "shortest":
        return Geometry(size, (size, size), "shortest", interpolation)
    if mode == "squash":
        return Geometry(0, (size, size), "squash", interpolation)
    return None


class OpenClip(Family):
    name = "open_clip"

    @classmethod
    def accepts(cls, model: str) -> bool:
        import open_clip

        return model.endswith(".json") or model.startswith(("hf-hub:", "local-dir:")) or model in open_clip.list_models()

    @classmethod
    def check(cls, job: JobSettings) -> tuple[str, str | None, dict[str, Any]]:
        return check_weights(job)

    @classmethod
    def load(cls, job: JobSettings, device: Any) -> OpenClipModel:
        return load_model(job, device)

    @classmethod
    def geometry_hint(cls, job: JobSettings) -> Geometry | None:
        return geometry_hint(job)
