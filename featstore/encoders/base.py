"""What an encoder is: the :class:`Encoder` base class every encoder plugin subclasses, the tokens a
forward pass returns (:class:`LayerTokens`), and the pooling every encoder shares.

An encoder turns PIL images into per-layer tokens. It is registered by a plugin (hook
``register_encoders``, see :mod:`featstore.hookspecs`) as a *class*; featstore instantiates it with a
model id or folder when an extraction runs. Nothing is loaded until it is needed: ``layers()`` reads
only the model's config, ``preprocess()`` only its image processor, ``forward()`` loads the weights.

This module imports neither ``transformers`` nor ``datasets``; encoder subclasses import what they
need inside their methods.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..errors import EncoderError, ModelLoadError, UnknownLayerError

POOLINGS: tuple[str, ...] = ("cls", "mean", "patch")
WEIGHT_FILE_PATTERNS: tuple[str, ...] = ("*.safetensors", "*.bin", "*.pt", "*.pth")


@dataclass
class LayerTokens:
    """The tokens of one layer for a batch of images.

    ``prefix``: ``(B, P, D)`` tokens before the patches (CLS, registers); ``P`` may be 0.
    ``patches``: ``(B, h*w, D)`` patch tokens in raster order (row by row, left to right).
    ``grid``: ``(h, w)``, the patch grid, the same for every image of the batch.
    """

    prefix: torch.Tensor
    patches: torch.Tensor
    grid: tuple[int, int]

    def __post_init__(self) -> None:
        h, w = self.grid
        if self.patches.dim() != 3 or self.patches.shape[1] != h * w:
            raise ValueError(f"patches must be (B, {h}*{w}, D) for grid {self.grid}, got {tuple(self.patches.shape)}")
        if (
            self.prefix.dim() != 3
            or self.prefix.shape[0] != self.patches.shape[0]
            or self.prefix.shape[2] != self.patches.shape[2]
        ):
            raise ValueError(
                f"prefix must be (B, P, D) matching patches {tuple(self.patches.shape)}, got {tuple(self.prefix.shape)}"
            )

    def grid_view(self) -> torch.Tensor:
        """Patch tokens as ``(B, h, w, D)``."""
        return self.patches.reshape(self.patches.shape[0], *self.grid, self.patches.shape[2])


def pool(tokens: LayerTokens, pooling: str) -> torch.Tensor:
    """Pool one layer's tokens: ``cls`` -> ``(B, D)`` (the first prefix token), ``mean`` -> ``(B, D)``
    (mean over the patch tokens, prefix tokens excluded), ``patch`` -> ``(B, h*w, D)`` (the grid as
    rows of tokens in raster order)."""
    if pooling == "cls":
        if tokens.prefix.shape[1] == 0:
            raise UnknownLayerError("pooling 'cls' needs a CLS token, but this layer has none; use 'mean' or 'patch'")
        return tokens.prefix[:, 0]
    if pooling == "mean":
        return tokens.patches.mean(dim=1)
    if pooling == "patch":
        return tokens.patches
    raise UnknownLayerError(f"unknown pooling {pooling!r}; choose from {', '.join(POOLINGS)}")


class Encoder:
    """Base class of every encoder plugin.

    A subclass sets :attr:`name` and implements :meth:`list_layers`, :meth:`load_config`, :meth:`load_model`,
    :meth:`load_processor` and :meth:`encode`; the base class provides lazy loading, layer
    validation (``all``, ``last``), preprocessing, provenance and pickling (for DataLoader workers:
    the processor travels, the model does not).

    ``model``: a hub id (``facebook/dinov2-small``) or a local folder in ``save_pretrained`` layout.
    ``device``, ``dtype``: where the weights run, and their dtype (``float32``, ``bfloat16``, ``float16``).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: poolings this encoder offers; encoders without a CLS token leave out ``cls``
    poolings: ClassVar[tuple[str, ...]] = POOLINGS

    def __init__(
        self, model: str | os.PathLike, device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32"
    ):
        self.model_id = str(model)
        self.device = torch.device(device)
        self.dtype = _torch_dtype(dtype)
        self._model: torch.nn.Module | None = None
        self._processor = None
        self._layers: list[str] | None = None
        self._config = None

    # ---- what a subclass implements ---------------------------------------------------------
    def list_layers(self) -> list[str]:
        """Every layer name this model offers, shallowest first (may read the config, not the weights)."""
        raise NotImplementedError(f"{type(self).__name__} must implement list_layers(), an abstract method of Encoder")

    def load_model(self) -> torch.nn.Module:
        """Load and return the model (called once, lazily); the base class moves it to device/dtype."""
        raise NotImplementedError(f"{type(self).__name__} must implement load_model(), an abstract method of Encoder")

    def load_processor(self) -> Any:
        """Load and return the image processor: ``processor(images=[...], return_tensors="pt")``."""
        raise NotImplementedError(  # abstract: every encoder plugin implements it
            f"{type(self).__name__} must implement load_processor(), an abstract method of Encoder"
        )

    def encode(
        self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], layers: Sequence[str]
    ) -> dict[str, LayerTokens]:
        """One forward pass of ``model`` over ``inputs`` returning the tokens of every layer in ``layers``."""
        raise NotImplementedError(f"{type(self).__name__} must implement encode(), an abstract method of Encoder")

    def last_layer(self) -> str:
        """The layer ``last`` stands for (default: the deepest one)."""
        return self.layers()[-1]

    # ---- layers -----------------------------------------------------------------------------
    def layers(self) -> list[str]:
        """The layer names this encoder offers (cached)."""
        if self._layers is None:
            with _needs_packages(self):
                self._layers = [str(layer) for layer in self.list_layers()]
        return list(self._layers)

    def resolve_layers(self, spec: str | Iterable[str]) -> list[str]:
        """Turn ``"10,15,23"``, ``"all"``, ``"last"`` (or a list of such) into validated layer names,
        in the order given, without duplicates. Numbers may be written bare (``10``) or as ``layer_10``."""
        items = spec.split(",") if isinstance(spec, str) else [str(s) for s in spec]
        offered = self.layers()
        out: list[str] = []
        for item in (s.strip() for s in items):
            if not item:
                continue
            if item == "all":
                names = offered
            elif item == "last":
                names = [self.last_layer()]
            elif item in offered:
                names = [item]
            elif re.fullmatch(r"\d+", item) and f"layer_{item}" in offered:
                names = [f"layer_{item}"]
            else:
                raise UnknownLayerError(
                    f"encoder {self.name!r} ({self.model_id}) has no layer {item!r}; it offers "
                    f"{_short_list(offered)} (or 'all', 'last')"
                )
            out += [n for n in names if n not in out]
        if not out:
            raise UnknownLayerError(f"no layers requested; encoder {self.name!r} offers {_short_list(offered)}")
        return out

    def resolve_poolings(self, spec: str | Iterable[str]) -> list[str]:
        """Validate ``"cls,mean"`` (or a list) against :attr:`poolings`."""
        items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
        bad = [p for p in items if p not in self.poolings]
        if bad or not items:
            raise UnknownLayerError(
                f"encoder {self.name!r} offers the poolings {', '.join(self.poolings)}; got {items}"
            )
        return list(dict.fromkeys(items))

    # ---- lazy loading -----------------------------------------------------------------------
    def load(self, weights: bool = True) -> None:
        """Load the image processor now, and with ``weights`` the model too, instead of on first use
        (before DataLoader workers fork, or before a timer starts)."""
        self.processor  # noqa: B018 (the properties load on first access)
        if weights:
            self.model  # noqa: B018

    @property
    def model(self) -> torch.nn.Module:
        """The model, loaded on first use, in eval mode on :attr:`device` with :attr:`dtype`."""
        if self._model is None:
            with _needs_packages(self), _refusing_pickles(self):
                model = self.load_model()
            self._model = model.to(device=self.device, dtype=self.dtype).eval()
        return self._model

    @property
    def processor(self) -> Any:
        """The image processor, loaded on first use."""
        if self._processor is None:
            with _needs_packages(self):
                self._processor = self.load_processor()
        return self._processor

    @property
    def config(self) -> Any:
        """The model's configuration (from :meth:`load_config`, loaded once; no weights)."""
        if getattr(self, "_config", None) is None:
            with _needs_packages(self):
                self._config = self.load_config()
        return self._config

    def load_config(self) -> Any:
        """Load the configuration of the part of the model that is encoded (e.g. a vision tower)."""
        raise NotImplementedError(f"{type(self).__name__} must implement load_config(), an abstract method of Encoder")

    @property
    def feature_size(self) -> int:
        """D, the size of one token (default: the config's ``hidden_size``)."""
        return int(self.config.hidden_size)

    # ---- the two steps of an extraction ----------------------------------------------------
    def preprocess(self, images: list) -> dict[str, torch.Tensor]:
        """PIL images -> model inputs (a dict of CPU tensors). Runs in DataLoader workers."""
        images = [im.convert("RGB") if getattr(im, "mode", "RGB") != "RGB" else im for im in images]
        out = self.processor(images=images, return_tensors="pt")
        return {k: v for k, v in dict(out).items() if isinstance(v, torch.Tensor)}

    @torch.inference_mode()
    def forward(self, inputs: dict[str, torch.Tensor], layers: Sequence[str]) -> dict[str, LayerTokens]:
        """One forward pass over a preprocessed batch: ``{layer: LayerTokens}`` for every layer in
        ``layers`` (names from :meth:`layers`), as float32 tensors on :attr:`device`."""
        unknown = [layer for layer in layers if layer not in self.layers()]
        if unknown:
            raise UnknownLayerError(
                f"encoder {self.name!r} has no layers {unknown}; it offers {_short_list(self.layers())}"
            )
        model = self.model
        moved = {
            k: v.to(self.device, dtype=self.dtype if v.is_floating_point() else v.dtype) for k, v in inputs.items()
        }
        return self.encode(model, moved, list(layers))

    # ---- where the files are, and what they are --------------------------------------------
    def resolve_file(self, filename: str) -> str:
        """Path of ``filename`` of the model: in the local folder, or the hub cache (downloaded when
        online; ``HF_HUB_OFFLINE=1`` or an unreachable hub uses the cache only)."""
        local = Path(self.model_id)
        if not local.is_dir() and looks_like_path(self.model_id):
            what = "is a file, not a model folder" if local.exists() else "does not exist"
            raise ModelLoadError(
                f"model folder {self.model_id} {what}; pass a folder written by save_pretrained, or a hub id "
                "such as facebook/dinov2-small"
            )
        if local.is_dir():
            path = local / filename
            if not path.is_file():
                raise ModelLoadError(
                    f"{local} has no {filename}; is it a save_pretrained folder of a {self.name} model?"
                )
            return str(path)
        try:
            from transformers.utils import cached_file

            cached = cached_file(self.model_id, filename)
        except Exception as exc:
            raise ModelLoadError(
                f"cannot get {filename} of model {self.model_id!r} ({exc}); pass a local save_pretrained folder, "
                "or a hub id that is cached (offline) or downloadable"
            ) from None
        if cached is None:
            raise ModelLoadError(f"model {self.model_id!r} has no {filename}")
        return str(cached)

    def model_folder(self) -> Path:
        """The folder holding the model's files (local folder or hub snapshot)."""
        return Path(self.resolve_file("config.json")).parent

    def provenance(self) -> dict[str, Any]:
        """What produced the features, for the store's metadata: encoder, model, its revision (hub
        snapshot) or the sha256 of its weight files, and the preprocessing configuration."""
        folder = self.model_folder()
        snapshot = re.search(r"/snapshots/([0-9a-f]{40})$", folder.as_posix())
        prov: dict[str, Any] = {
            "encoder": self.name,
            "model": self.model_id if not Path(self.model_id).is_dir() else str(Path(self.model_id).resolve()),
            "dtype": str(self.dtype).replace("torch.", ""),
        }
        if snapshot:
            prov["revision"] = snapshot.group(1)
        else:
            prov["weights_sha256"] = weights_sha256(folder)
        prov["preprocessing"] = self.preprocessing_config()
        return prov

    def preprocessing_config(self) -> dict[str, Any]:
        """The image processor's settings as a JSON-able dict (its class name included)."""
        proc = self.processor
        cfg = proc.to_dict() if hasattr(proc, "to_dict") else {}
        cfg = json.loads(json.dumps(cfg, default=str, sort_keys=True))
        cfg["processor_class"] = type(proc).__name__
        return cfg

    # ---- pickling for DataLoader workers ----------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_model"] = None  # workers only preprocess
        return state

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model_id!r}, device={str(self.device)!r}, dtype={str(self.dtype).replace('torch.', '')!r})"


@contextmanager
def _needs_packages(encoder: Encoder):
    """Turn a missing optional package (``transformers``...) into an error that says what to install."""
    try:
        yield
    except ModuleNotFoundError as exc:
        package = (exc.name or "a package").split(".")[0]
        raise EncoderError(
            f"encoder {encoder.name!r} needs the package {package!r}, which is not installed; pip install {package}"
        ) from exc


def looks_like_path(model: str) -> bool:
    """Whether a ``--model`` value is meant as a local path (``./m``, ``/m``, ``~/m``, ``a/b/c``) rather
    than a hub id (``org/name``)."""
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or (os.sep != "/" and os.sep in model)


@contextmanager
def _refusing_pickles(encoder: Encoder):
    """A checkpoint torch refuses to unpickle with ``weights_only=True`` becomes a ModelLoadError that
    names the file and suggests safetensors; torch's advice to turn weights_only off is never passed on."""
    import pickle

    try:
        yield
    except (pickle.UnpicklingError, OSError, RuntimeError, ValueError) as exc:
        if "weights_only" not in str(exc) and not isinstance(exc, pickle.UnpicklingError):
            raise
        folder = Path(encoder.model_id)
        pickled = (
            sorted(p.name for pattern in ("*.bin", "*.pt", "*.pth") for p in folder.glob(pattern))
            if folder.is_dir()
            else []
        )
        where = f"{folder / pickled[0]}" if pickled else f"the checkpoint of {encoder.model_id}"
        raise ModelLoadError(
            f"{where}: refused: the checkpoint is not a plain tensor file (it holds pickled Python objects, "
            "which could run code when loaded); use a model.safetensors checkpoint instead (convert a copy "
            "you trust with save_pretrained(..., safe_serialization=True))"
        ) from None


def weights_sha256(folder: str | os.PathLike) -> str:
    """sha256 over the weight files of a model folder (names and bytes, sorted by name)."""
    folder = Path(folder)
    files = sorted({p for pattern in WEIGHT_FILE_PATTERNS for p in folder.glob(pattern) if p.is_file()})
    if not files:
        raise ModelLoadError(f"{folder} holds no weight files ({', '.join(WEIGHT_FILE_PATTERNS)})")
    h = hashlib.sha256()
    for path in files:
        h.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(8 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    named = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if dtype not in named:
        raise ValueError(f"dtype must be one of {', '.join(named)}, got {dtype!r}")
    return named[dtype]


def _short_list(items: Sequence[str], shown: int = 40) -> str:
    text = ", ".join(items[:shown])
    return text + (f", ... ({len(items)} in all)" if len(items) > shown else "")
