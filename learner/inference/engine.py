"""Tagging engine: image bytes in, catalog attributes with confidences (and detections) out.

Two halves so a service can overlap them:
- `prepare(data)`: decode + resize on CPU (thread-safe, no model state; run it on worker threads);
- `infer(prepared)`: one batched forward pass of the classifier through its backend (`ClassifierRunner`:
  torch or onnxruntime, see `learner.inference.backends`), and of the detector (torch) if the bundle has one.

Single-choice values go through the bundle's `ValueDecoder` (temperatures, hierarchy-consistent decoding,
auto-fill thresholds): `ImageTags.auto_filled` says per group whether the first value may be written as the
model's or is only a suggestion. `tta="flip"` averages the probabilities of the image and its mirror image.
`tag_bytes` does both and isolates failures: one bad image yields a `TagError` for that image only.
A mask detector's detections also carry their instance mask (COCO RLE in original image pixels,
`learner.model.masks`) and the mask's dominant colour in a palette of the taxonomy's colour values
(`learner.inference.colour`), reported beside the classifier's colour.

The engine is bound to one bundle. Hot reload swaps whole engines between batches; nothing here is global.
Must not import torch at module level: with the onnxruntime backend the serving process never loads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from learner.inference.decoding import Decisions, ValueDecoder
from learner.inference.imaging import (
    DEFAULT_MAX_PIXELS,
    ImageDecodeError,
    PreparedImage,
    decode_image_sized,
    letterbox,
    pil_to_uint8_array,
    pil_to_uint8_tensor,
)
from learner.model.manifest import BundleInfo

if TYPE_CHECKING:
    import torch

    from learner.model.bundle import ModelBundle
    from learner.model.detector import DetectorSpec

DETECTOR_MAX_SIDE = 640
TTA_MODES = (None, "none", "flip")


class ClassifierRunner(Protocol):
    """What the engine needs from an inference backend (`learner.inference.backends` builds them): per-image
    inputs, and batched probabilities per group."""

    name: str
    device: str

    def to_input(self, image: np.ndarray) -> Any:
        """The backend's per-image input from an S x S x 3 uint8 array (kept in `PreparedImage`)."""
        ...

    def mirror(self, x: Any) -> Any:
        """One input from `to_input`, mirrored left to right (flip test-time augmentation); the runner knows its
        layout."""
        ...

    def probabilities(self, inputs: Sequence[Any]) -> dict[str, np.ndarray]:
        """N inputs from `to_input` -> per group an N x V float32 array (softmax or sigmoid)."""
        ...


@dataclass
class Detection:
    label: str
    score: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in original image pixels
    attributes: dict[str, str] = field(default_factory=dict)
    mask: dict[str, Any] | None = None  # COCO RLE {"size": [h, w], "counts": str} in original image pixels
    colour: str | None = None  # the masked pixels' dominant colour, a value of the taxonomy's colour group


@dataclass
class ImageTags:
    """Per attribute group, candidate values with confidences, best first; plus detections."""

    attributes: dict[str, list[tuple[str, float]]]
    detections: list[Detection]
    width: int
    height: int
    model_version: str
    auto_filled: dict[str, bool] = field(default_factory=dict)  # group -> first value clears its threshold
    # the shift guard's score (None: the runner gave none) and whether it is above the bundle's cut-off: an
    # unfamiliar photo has none of its values auto-filled (learner.model.shift_guard)
    shift_score: float | None = None
    unfamiliar: bool = False
    # per single-choice group, the image's calibrated probabilities (C,) as the decoder computed them (None: tags
    # built without them): what the product decision (learner.inference.product_decision) averages over photos
    probs: dict[str, np.ndarray] | None = None

    def top(self, group: str) -> tuple[str, float] | None:
        values = self.attributes.get(group)
        return values[0] if values else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "attributes": {
                g: [{"value": v, "confidence": round(c, 4)} for v, c in vals] for g, vals in self.attributes.items()
            },
            "detections": [asdict(d) for d in self.detections],
            "width": self.width,
            "height": self.height,
            "model_version": self.model_version,
            "auto_filled": {g: self.is_auto_filled(g) for g in self.attributes},
            "shift_score": None if self.shift_score is None else round(self.shift_score, 4),
            "unfamiliar": self.unfamiliar,
        }

    def is_auto_filled(self, group: str) -> bool:
        """False when the group's value is only a suggestion (below the bundle's auto-fill threshold)."""
        return self.auto_filled.get(group, True)


@dataclass
class TagError:
    reason: str  # empty | not_an_image | truncated | too_large | fetch_failed | ...
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"error": self.reason, "message": self.message}


def pick_device(device: str = "auto") -> torch.device:
    """cuda when available for "auto", else the named device (training and evaluation use it too)."""
    from learner.inference.torch_runner import pick_device as pick

    return pick(device)


class TaggingEngine:
    """Tags images with one bundle. `TaggingEngine(model_bundle)` runs it on torch, as always; an engine on another
    backend is built by `learner.inference.backends.load_engine`, which passes a torch-free `BundleInfo`, the
    backend's `classifier` runner and, when the bundle has one, the `detector` (a torch module and its spec)."""

    def __init__(
        self,
        bundle: ModelBundle | BundleInfo,
        device: str = "auto",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        top_k: int = 3,
        amp: bool = True,
        tta: str | None = None,
        *,
        classifier: ClassifierRunner | None = None,
        detector: tuple[torch.nn.Module, DetectorSpec] | None = None,
    ) -> None:
        if tta not in TTA_MODES:
            raise ValueError(f"tta must be one of {', '.join(map(str, TTA_MODES))}, not {tta!r}")
        self.tta = None if tta == "none" else tta
        self.decoder = ValueDecoder.for_bundle(bundle)
        from learner.inference.product_decision import ProductDecider

        # one decision per product from its photos' tags and its title (learner.inference.product_decision)
        self.decider = ProductDecider.for_bundle(bundle, self.decoder, top_k)
        self.bundle = bundle
        self.max_pixels = max_pixels
        self.top_k = top_k
        self.pre = bundle.preprocessing
        if classifier is None:
            if isinstance(bundle, BundleInfo):
                raise ValueError("a BundleInfo carries no weights: pass its classifier runner (see load_engine)")
            from learner.inference.torch_runner import TorchClassifier

            on_torch = TorchClassifier(bundle.classifier, device=device, amp=amp)
            if bundle.detector is not None and bundle.detector_spec is not None:
                detector = (bundle.detector.to(on_torch.torch_device).eval(), bundle.detector_spec)
            classifier = on_torch
        self.classifier: ClassifierRunner = classifier
        self.backend = classifier.name
        self.device = classifier.device
        self.detector = detector
        self._amp = amp
        from learner.inference.colour import palette_for

        colour_groups = [g for g in bundle.taxonomy.classifier_groups if g.colour]
        self.palette = palette_for(colour_groups[0].values) if colour_groups else {}

    @property
    def model_version(self) -> str:
        return self.bundle.model_version

    # -- CPU half ----------------------------------------------------------------------------------
    def prepare(self, data: bytes) -> PreparedImage:
        """Decode and resize one image. Raises ImageDecodeError for a bad image."""
        draft = self.pre.input_size * 2 if self.detector is None else DETECTOR_MAX_SIDE
        # draft() may decode at a reduced scale: the true size (box coordinates) comes from the same parse
        img, (true_w, true_h) = decode_image_sized(data, max_pixels=self.max_pixels, draft_size=draft)
        w, h = img.size
        prepared = PreparedImage(
            classifier_input=self.classifier.to_input(pil_to_uint8_array(letterbox(img, self.pre))),
            width=true_w,
            height=true_h,
        )
        if self.detector is not None:
            scale = min(1.0, DETECTOR_MAX_SIDE / max(w, h))
            small = img if scale == 1.0 else img.resize((max(1, round(w * scale)), max(1, round(h * scale))))
            prepared.detector_input = pil_to_uint8_tensor(small)
            prepared.detector_scale = true_w / small.size[0]
        return prepared

    # -- device half -------------------------------------------------------------------------------
    def infer(self, batch: Sequence[PreparedImage]) -> list[ImageTags]:
        if not batch:
            return []
        inputs = [p.classifier_input for p in batch]
        if self.tta == "flip":  # the mean of the image's and its mirror image's probabilities
            both = self.classifier.probabilities([*inputs, *(self.classifier.mirror(x) for x in inputs)])
            probs = {k: (v[: len(batch)] + v[len(batch) :]) / 2 for k, v in both.items()}
        else:
            probs = self.classifier.probabilities(inputs)
        decisions = self.decoder(probs)
        detections: list[list[dict[str, Any]]] = [[] for _ in batch]
        if self.detector is not None:
            detections = self._detect(batch)
        return [self._assemble(i, p, probs, decisions, detections[i]) for i, p in enumerate(batch)]

    def _detect(self, batch: Sequence[PreparedImage]) -> list[list[dict[str, Any]]]:
        import contextlib

        import torch

        from learner.model.detector import detect

        assert self.detector is not None
        module, spec = self.detector
        device = next(module.parameters()).device
        imgs = [
            torch.as_tensor(p.detector_input if p.detector_input is not None else p.classifier_input).to(device).float()
            / 255.0
            for p in batch
        ]
        autocast: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
        if self._amp and device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            autocast = torch.autocast(device_type="cuda", dtype=dtype)
        with torch.inference_mode(), autocast:
            return detect(module, imgs, spec)

    def _assemble(
        self, i: int, p: PreparedImage, probs: dict[str, np.ndarray], decisions: Decisions, dets: list[dict[str, Any]]
    ) -> ImageTags:
        taxonomy = self.bundle.taxonomy
        auto_filled = {name: bool(auto[i]) for name, auto in decisions.auto_filled.items()}
        attributes: dict[str, list[tuple[str, float]]] = {}
        for g in taxonomy.classifier_groups:
            row = probs[g.name][i]
            if g.multi_label:
                chosen = [(g.values[j], float(row[j])) for j in range(len(g.values))]
                chosen = [(v, c) for v, c in chosen if c >= self.bundle.threshold(g.name, v)]
                attributes[g.name] = sorted(chosen, key=lambda vc: -vc[1])
            else:
                attributes[g.name] = decisions.ranked(g.name, i, g.values, min(self.top_k, len(g.values)))
        found: list[Detection] = []
        detector_groups = {g.name for g in taxonomy.groups if g.source == "detector"}
        for d in dets:
            box = tuple(float(v) * p.detector_scale for v in d["box"])
            mapped = dict(taxonomy.attributes_for_detection(d["label"]))
            detection = Detection(d["label"], d["score"], box, mapped)  # type: ignore[arg-type]
            if d.get("mask") is not None:
                detection.mask, detection.colour = self._mask_and_colour(p, d["mask"])
            found.append(detection)
            for group, value in mapped.items():
                if group in detector_groups:
                    current = dict(attributes.get(group, []))
                    current[value] = max(current.get(value, 0.0), d["score"])
                    attributes[group] = sorted(current.items(), key=lambda vc: -vc[1])
        score = None if decisions.shift_score is None else float(decisions.shift_score[i])
        unfamiliar = bool(decisions.unfamiliar[i]) if decisions.unfamiliar is not None else False
        calibrated = {name: rows[i] for name, rows in decisions.probs.items()}
        return ImageTags(
            attributes, found, p.width, p.height, self.bundle.model_version, auto_filled, score, unfamiliar, calibrated
        )

    def _mask_and_colour(self, p: PreparedImage, mask: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        """The mask in original image pixels, and its dominant colour (on the detector's input pixels)."""
        from learner.inference.colour import dominant_colour
        from learner.model.masks import decode, resize

        colour = None
        if self.palette and p.detector_input is not None:
            pixels = np.asarray(p.detector_input).transpose(1, 2, 0)
            found = dominant_colour(pixels, decode(mask), self.palette)
            colour = found[0] if found is not None else None
        return resize(mask, p.width, p.height), colour

    # -- both --------------------------------------------------------------------------------------
    def tag_bytes(self, images: Sequence[bytes], batch_size: int = 32) -> list[ImageTags | TagError]:
        """Tag many images; a bad image gives a TagError in its slot, the others are still tagged."""
        results: list[ImageTags | TagError | None] = [None] * len(images)
        ready: list[tuple[int, PreparedImage]] = []
        for i, data in enumerate(images):
            try:
                ready.append((i, self.prepare(data)))
            except ImageDecodeError as exc:
                results[i] = TagError(exc.reason, str(exc))
        for start in range(0, len(ready), batch_size):
            chunk = ready[start : start + batch_size]
            for (i, _), tags in zip(chunk, self.infer([p for _, p in chunk]), strict=True):
                results[i] = tags
        return [r for r in results if r is not None]
