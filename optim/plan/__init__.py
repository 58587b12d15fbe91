"""Will it fit my GPU? The memory of every combination of weight storage, offload and VAE tiling, predicted before
anything runs, from the model's configs: exact weights (`optim.plan.weights`) plus the working memory of each
phase (`optim.plan.peaks`), under what each offload mode keeps on the GPU.

    python -m optim plan --model black-forest-labs/FLUX.1-dev --gpu rtx-4090
    >>> plan("black-forest-labs/FLUX.1-dev", "rtx-4090").fits[0].label  # doctest: +SKIP

What each offload mode keeps on the GPU at a phase (encode the prompt, denoise, decode):

* none: every component, all the time;
* model CPU offload: the component that runs (the largest of them at its phase);
* sequential CPU offload: one leaf layer at a time;
* group offload, block level: one block of the running component (two with CUDA streams: the next is
  prefetched), or its layers outside the blocks; leaf level: one leaf (two with streams).

A combination fits when its peak plus the margin (0.5 GiB for the CUDA context, and 5% of the peak for the
allocator's rounding and fragmentation) is within the card. Those that fit are ranked by the speed they can be
expected to keep: no offload, then model offload, group offload with streams, group offload, sequential offload;
within a class, the storage that costs least to dequantize first, then the smaller peak.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from optim.plan.cards import GIB, Card, parse_card
from optim.plan.peaks import Terms, decode_terms, denoise_terms, encode_terms
from optim.plan.weights import DTYPE_BYTES, SCHEMES, ComponentWeights, Scheme, component_weights, model_parts

CONTEXT_BYTES = GIB // 2
ALLOCATOR_SHARE = 0.05

# (key, lab offload settings, speed class, words)
OFFLOADS = (
    ("none", {"mode": "none"}, 0, "no offload"),
    ("model_cpu", {"mode": "model_cpu"}, 1, "model CPU offload"),
    ("group_block_stream", {"mode": "group", "use_stream": True}, 2, "group offload (blocks, CUDA stream)"),
    ("group_leaf_stream", {"mode": "group", "offload_type": "leaf_level", "use_stream": True}, 2,
     "group offload (leaves, CUDA stream)"),
    ("group_block", {"mode": "group"}, 3, "group offload (blocks)"),
    ("group_leaf", {"mode": "group", "offload_type": "leaf_level"}, 4, "group offload (leaves)"),
    ("sequential_cpu", {"mode": "sequential_cpu"}, 5, "sequential CPU offload"),
)


@dataclass
class Option:
    """One combination: its settings (loadable into the controls), what it needs, and why it ranks where it does."""

    label: str
    settings: dict[str, Any]
    after_load_bytes: int
    peak_bytes: int
    host_bytes: int
    fits: bool
    speed_class: int
    reason: str
    peak_phase: str
    terms: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def peak_gib(self) -> float:
        return self.peak_bytes / GIB


@dataclass
class PlanResult:
    model: str
    card: Card
    run: dict[str, Any]
    weights: dict[str, dict[str, int]]  # component -> scheme -> bytes
    parameters: dict[str, int]
    options: list[Option]

    @property
    def fits(self) -> list[Option]:
        return [option for option in self.options if option.fits]

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "card": asdict(self.card), "run": self.run, "weights": self.weights,
                "parameters": self.parameters, "context_bytes": CONTEXT_BYTES, "allocator_share": ALLOCATOR_SHARE,
                "options": [asdict(option) for option in self.options]}


def _component_sets(parts: dict[str, Any], scheme: Scheme) -> list[tuple[str, ...]]:
    """Which components a scheme may store: every non-empty set of the transformer and the text encoders (the
    lab's quantization section takes one scheme and a list of components)."""
    from itertools import combinations

    eligible = [c for c, p in parts.items() if (c == "transformer" or c.startswith("text_encoder"))
                and p.library in scheme.libraries]
    return [tuple(chosen) for size in range(1, len(eligible) + 1) for chosen in combinations(eligible, size)]


def _resident(weights: dict[str, ComponentWeights], offload: str, component: str) -> int:
    """GPU bytes of weights while `component` runs, under `offload` (see the module docstring)."""
    own = weights[component]
    if offload == "none":
        return sum(w.bytes for w in weights.values())
    if offload == "model_cpu":
        return own.bytes
    if offload == "sequential_cpu":
        return own.largest_leaf_bytes
    copies = 2 if offload.endswith("stream") else 1
    if offload.startswith("group_leaf"):
        return copies * own.largest_leaf_bytes
    return max(own.outside_blocks_bytes, copies * max(own.block_bytes, default=0))


class _Model:
    """The model's parts built on meta once, and each component's bytes under each scheme (cached)."""

    def __init__(self, ref: Any, dtype: str) -> None:
        from optim.synthetic import build_on_meta

        self.parts, self.family = model_parts(ref)
        self.dtype = dtype
        self.modules = {name: build_on_meta(part) for name, part in self.parts.items()}
        self._cache: dict[tuple[str, str], ComponentWeights] = {}

    def weights(self, component: str, scheme: str) -> ComponentWeights:
        key = (component, scheme)
        if key not in self._cache:
            part = self.parts[component]
            self._cache[key] = component_weights(self.modules[component], component, part.library, SCHEMES[scheme],
                                                 self.dtype)
        return self._cache[key]


def evaluate(model: _Model, run: Any, card: Card, scheme: str, components: tuple[str, ...], offload: str,
             tiling: bool, *, attention: str = "native", cache: Any = None, guidance: str = "true_cfg") -> Option:
    """One combination's prediction."""
    d = DTYPE_BYTES[model.dtype]
    weights = {name: model.weights(name, scheme if name in components else "none") for name in model.parts}
    separate = guidance == "true_cfg" and run.guidance_scale > 1
    text_encoders = {name: {**model.parts[name].config, "_class": model.parts[name].class_name}
                     for name in model.parts if name.startswith("text_encoder")}
    phases: list[tuple[str, Terms]] = [(name, terms) for name, terms in
                                       encode_terms(text_encoders, run, d, separate or guidance == "cfg").items()]
    transformer = model.parts["transformer"].config if "transformer" in model.parts else {}
    phases.append(("transformer", denoise_terms(model.family, transformer, run, attention=attention, cache=cache,
                                                separate_cfg=separate, d=d)))
    if "vae" in model.parts:
        phases.append(("vae", decode_terms(model.family, model.parts["vae"].config, run, d, tiling=tiling)))
    peak, peak_phase, terms = 0, "", {}
    for component, phase in phases:
        resident = _resident(weights, offload, component)
        total = resident + phase.total
        terms[f"{phase.phase} ({component})"] = {"weights on the GPU": resident, **phase.terms}
        if total > peak:
            peak, peak_phase = total, f"{phase.phase} ({component})"
    after_load = sum(w.bytes for w in weights.values()) if offload == "none" else 0
    host = 0 if offload == "none" else sum(w.bytes for w in weights.values())
    fits = peak + CONTEXT_BYTES + ALLOCATOR_SHARE * peak <= card.memory_bytes
    offload_settings = next(entry for entry in OFFLOADS if entry[0] == offload)
    storage = SCHEMES[scheme]
    where = ", ".join(components)
    label = f"{storage.label} ({where})" if scheme != "none" else f"weights in {model.dtype}"
    label += f", {offload_settings[3]}" + (", VAE tiling" if tiling else "")
    settings: dict[str, Any] = {"offload": dict(offload_settings[1])}
    if scheme != "none":
        settings["quantization"] = {**storage.settings, "components": list(components)}
    if tiling:
        settings["vae"] = {"tiling": True}
    stored = f"weights at {model.dtype}" if scheme == "none" else f"{storage.label} on {where}"
    reason = f"{offload_settings[3]}; {stored}; peak in {peak_phase}: {peak / GIB:.2f} GiB"
    return Option(label, settings, after_load, peak, host, fits, offload_settings[2], reason, peak_phase, terms)


def plan(model_name: str, gpu: str | Card, *, width: int | None = None, height: int | None = None,
         steps: int | None = None, num_frames: int | None = None, max_sequence_length: int | None = None,
         dtype: str = "bfloat16", guidance_scale: float | None = None, attention: str = "native",
         cache: Any = None, storage: str | None = None) -> PlanResult:
    """Every combination for `model_name` on the card `gpu` (a name or a size), ranked (see the module docstring);
    `storage`: only that weight storage (a `SCHEMES` key) besides the run dtype."""
    if storage is not None and storage not in SCHEMES:
        from optim.errors import ConfigError

        raise ConfigError(f"storage {storage!r}: use one of {', '.join(SCHEMES)}")
    from types import SimpleNamespace

    from optim.models import resolve_model
    from optim.plan.weights import parameter_count

    card = gpu if isinstance(gpu, Card) else parse_card(gpu)
    ref = resolve_model(model_name)
    model = _Model(ref, dtype)
    defaults = _defaults(ref, model.family)
    run = SimpleNamespace(width=width or defaults["width"], height=height or defaults["height"],
                          steps=steps or defaults["steps"], num_frames=num_frames or defaults.get("num_frames"),
                          max_sequence_length=max_sequence_length or defaults.get("max_sequence_length"),
                          guidance_scale=defaults["guidance_scale"] if guidance_scale is None else guidance_scale)
    guidance = _guidance(model)
    # VAE tiling only where it changes the decode (an output larger than the VAE's tile).
    vae = model.parts["vae"].config if "vae" in model.parts else {}
    tilings = (False, True) if decode_terms(model.family, vae, run, 2, tiling=True).total != \
        decode_terms(model.family, vae, run, 2, tiling=False).total else (False,)
    options = []
    for scheme_key, scheme in SCHEMES.items():
        if storage is not None and scheme_key not in ("none", storage):
            continue
        sets = [()] if scheme_key == "none" else _component_sets(model.parts, scheme)
        for components in sets:
            for offload, *_ in OFFLOADS:
                for tiling in tilings:
                    options.append(evaluate(model, run, card, scheme_key, components, offload, tiling,
                                            attention=attention, cache=cache, guidance=guidance))
    options.sort(key=lambda o: (not o.fits, o.speed_class, _speed_rank(o), o.peak_bytes))
    weights = {name: {key: model.weights(name, key).bytes for key in SCHEMES
                      if key == "none" or model.parts[name].library in SCHEMES[key].libraries}
               for name in model.parts}
    return PlanResult(model_name, card, vars(run), weights,
                      {name: parameter_count(module) for name, module in model.modules.items()}, options)


def _speed_rank(option: Option) -> int:
    quantization = option.settings.get("quantization")
    if not quantization:
        return 0
    return next(s.speed_rank for s in SCHEMES.values()
                if s.settings == {k: v for k, v in quantization.items() if k != "components"})


def _defaults(ref: Any, family: str | None) -> dict[str, Any]:
    from optim.models import model_defaults

    try:
        return vars(model_defaults(ref)).copy()
    except Exception:  # noqa: BLE001 - a Hub model without its card on this machine: its family's published run
        from optim import families

        for model in families.FULL_SIZE_MODELS.values():
            if model.hub_id == ref.name:
                return asdict(model.settings)
        raise


def _guidance(model: _Model) -> str:
    from optim import families

    if model.family is None:
        return "true_cfg"
    embeds = bool(model.parts.get("transformer") and model.parts["transformer"].config.get("guidance_embeds"))
    return families.guidance_style(model.family, embeds)


def format_plan(result: PlanResult, *, top: int = 12) -> str:
    """The plan in words: the weights of each component, then what fits, best first, and the closest that do not."""
    lines = [f"{result.model} on {result.card.note or result.card.name} ({result.card.memory_gib:g} GiB): "
             f"{result.run['width']}x{result.run['height']}"
             + (f", {result.run['num_frames']} frames" if result.run.get("num_frames") else "")
             + f", max_sequence_length {result.run['max_sequence_length']}", "", "weights (GiB) by storage:"]
    for component, schemes in result.weights.items():
        shown = ", ".join(f"{key} {value / GIB:.2f}" for key, value in schemes.items()
                          if key in ("none", "layerwise_fp8", "torchao_int8", "bnb_nf4", "quanto_int4"))
        lines.append(f"  {component} ({result.parameters[component] / 1e9:.2f} B parameters): {shown}")
    fits = result.fits
    loaded = next((o for o in result.options if o.label == f"weights in {result.run.get('dtype', 'bfloat16')}, "
                   "no offload" or (not o.settings.get("quantization") and o.settings["offload"] == {"mode": "none"}
                                    and "vae" not in o.settings)), None)
    if loaded is not None:
        lines += ["", f"as loaded ({loaded.label}): {loaded.peak_gib:.2f} GiB peak, "
                      + ("fits" if loaded.fits else "does not fit")]
    lines += ["", f"{len(fits)} of {len(result.options)} combinations fit (peak + 0.5 GiB CUDA context + 5% "
                  "allocator margin), fastest expected first:"]
    for option in fits[:top]:
        lines.append(f"  {option.peak_gib:6.2f} GiB peak, {option.after_load_bytes / GIB:6.2f} after loading, "
                     f"{option.host_bytes / GIB:6.2f} host: {option.label}")
    if not fits:
        lines.append("  none: the smallest need is below")
    closest = sorted((o for o in result.options if not o.fits), key=lambda o: (o.speed_class, o.peak_bytes))[:3]
    if closest:
        lines += ["", "does not fit (the fastest kinds):"]
        for option in closest:
            lines.append(f"  {option.peak_gib:6.2f} GiB peak: {option.label}")
    lines += ["", "every term of every combination: --json"]
    return "\n".join(lines)
