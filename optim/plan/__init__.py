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

Loading counts too: bitsandbytes quantizes on the GPU, so its components land there when loaded and stay until
the offload mode is applied; a combination needs the larger of that and its generation's peak.

A combination fits when its peak plus the margin (0.5 GiB for the CUDA context, and 5% of the peak for the
allocator's rounding and fragmentation) is within the card. Those that fit are ranked by the speed they can be
expected to keep: no offload, then model offload, group offload with streams, group offload, sequential offload;
within a class, the storage that costs least to dequantize first, then the smaller peak.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import lru_cache
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


# Why each speed class ranks where it does (the one-line reason of each option starts with it).
SPEED_WHY = {0: "every weight stays on the GPU, no transfers", 1: "each component moves to the GPU once per phase",
             2: "blocks stream in while the previous one computes", 3: "each block moves in when needed, compute waits",
             4: "each layer moves in when needed, compute waits", 5: "every layer crosses to the GPU at every step"}


def with_margins(need: float) -> float:
    """A peak plus the allocator's share of it and the CUDA context: what a card must have for it."""
    return need * (1 + ALLOCATOR_SHARE) + CONTEXT_BYTES


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
    reserved_peak_bytes: int = 0  # the allocator's reserved memory, an upper bound (optim.plan.peaks)
    load_peak_bytes: int = 0  # GPU memory while loading (bitsandbytes components land on the GPU at load)

    @property
    def peak_gib(self) -> float:
        """The generation's peak."""
        return self.peak_bytes / GIB

    @property
    def need_bytes(self) -> int:
        """The most the GPU holds at once, loading included (what must fit)."""
        return max(self.peak_bytes, self.load_peak_bytes)

    @property
    def card_bytes(self) -> float:
        """What it needs of a card: `need_bytes` with the allocator's margin and the CUDA context."""
        return with_margins(self.need_bytes)


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

    def closest_misses(self, count: int = 3) -> list[Option]:
        """The combinations that do not fit, fastest kind first, then the smallest need."""
        return sorted((o for o in self.options if not o.fits), key=lambda o: (o.speed_class, o.need_bytes))[:count]

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


def _resident(weights: dict[str, ComponentWeights], offload: str, component: str, pinned: tuple[str, ...] = ()) -> int:
    """GPU bytes of weights while `component` runs, under `offload` (see the module docstring); `pinned`: the
    components that model offload leaves on the GPU."""
    own = weights[component]
    if offload == "none":
        return sum(w.bytes for w in weights.values())
    if offload == "model_cpu":
        return own.bytes + sum(weights[name].bytes for name in pinned if name != component)
    if offload == "sequential_cpu":
        return own.largest_leaf_bytes
    copies = 2 if offload.endswith("stream") else 1
    if offload.startswith("group_leaf"):
        return copies * own.largest_leaf_bytes
    return max(own.outside_blocks_bytes, copies * max(own.block_bytes, default=0))


class _Model:
    """The model's parts built on meta once, and each component's bytes under each scheme (cached)."""

    def __init__(self, ref: Any, dtype: str, rules: str = "installed") -> None:
        from optim.synthetic import build_on_meta

        self.ref = ref
        self.parts, self.family = model_parts(ref)
        self.dtype = dtype
        self.rules = rules
        self.modules = {name: build_on_meta(part) for name, part in self.parts.items()}
        self._cache: dict[tuple[str, str], ComponentWeights] = {}

    def weights(self, component: str, scheme: str) -> ComponentWeights:
        key = (component, scheme)
        if key not in self._cache:
            part = self.parts[component]
            self._cache[key] = component_weights(self.modules[component], component, part.library, SCHEMES[scheme],
                                                 self.dtype, self.rules)
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
    # bitsandbytes quantizes on the GPU: its loaders place the component there (device_map {"": cuda}), and an
    # offload mode moves it to the host only after the pipeline is built, so loading holds all of them at once.
    on_gpu_at_load = tuple(name for name in components if scheme.startswith("bnb"))
    # diffusers skips model offload's hook for bitsandbytes 8-bit with transformers < 4.58 or bitsandbytes < 0.48
    # (pipeline_utils.py, enable_model_cpu_offload): those components stay on the GPU throughout.
    pinned = on_gpu_at_load if scheme == "bnb_int8" and model.rules != "installed" else ()
    peak, peak_phase, terms, held, reserved = 0, "", {}, 0, 0
    for component, phase in phases:
        resident = _resident(weights, offload, component, pinned)
        total = resident + phase.total
        terms[f"{phase.phase} ({component})"] = {"weights on the GPU": resident, **phase.terms}
        if total > peak:
            peak, peak_phase = total, f"{phase.phase} ({component})"
        held += phase.held
        reserved = max(reserved, resident + held)
    after_load = sum(w.bytes for w in weights.values()) if offload == "none" else 0
    host = 0 if offload == "none" else sum(w.bytes for w in weights.values())
    load_peak = after_load if offload == "none" else sum(weights[name].bytes for name in on_gpu_at_load)
    need = with_margins(max(peak, load_peak))
    fits = need <= card.memory_bytes
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
    room = (f"{(card.memory_bytes - need) / GIB:.1f} GiB to spare" if fits
            else f"{(need - card.memory_bytes) / GIB:.1f} GiB short")
    at = f"peak in {peak_phase}" if peak >= load_peak else f"peak while loading ({load_peak / GIB:.2f} GiB)"
    reason = f"{SPEED_WHY[offload_settings[2]]}; {stored}; {at}, {room}"
    return Option(label, settings, after_load, peak, host, fits, offload_settings[2], reason, peak_phase, terms,
                  reserved, load_peak)


def plan(model_name: str, gpu: str | Card, *, width: int | None = None, height: int | None = None,
         steps: int | None = None, num_frames: int | None = None, max_sequence_length: int | None = None,
         dtype: str = "bfloat16", guidance_scale: float | None = None, attention: str = "native",
         cache: Any = None, storage: str | None = None, rules: str = "installed") -> PlanResult:
    """Every combination for `model_name` on the card `gpu` (a name or a size), ranked (see the module docstring);
    `storage`: only that weight storage (a `SCHEMES` key) besides the run dtype; `rules`: whose loaders' rules
    (`optim.plan.weights.RULES`)."""
    from optim.errors import ConfigError
    from optim.plan.weights import RULES

    if storage is not None and storage not in SCHEMES:
        raise ConfigError(f"storage {storage!r}: use one of {', '.join(SCHEMES)}")
    if rules not in RULES:
        raise ConfigError(f"rules {rules!r}: use one of {', '.join(RULES)}")
    from optim.plan.weights import parameter_count

    card = gpu if isinstance(gpu, Card) else parse_card(gpu)
    model = _model(model_name, dtype, rules)
    run = _run(model, width=width, height=height, steps=steps, num_frames=num_frames,
               max_sequence_length=max_sequence_length, guidance_scale=guidance_scale)
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
    options.sort(key=lambda o: (not o.fits, o.speed_class, _speed_rank(o), o.need_bytes))
    weights = {name: {key: model.weights(name, key).bytes for key in SCHEMES
                      if key == "none" or model.parts[name].library in SCHEMES[key].libraries}
               for name in model.parts}
    return PlanResult(model_name, card, {**vars(run), "dtype": dtype, "attention": attention, "rules": rules}, weights,
                      {name: parameter_count(module) for name, module in model.modules.items()}, options)


@lru_cache(maxsize=8)
def _model(model_name: str, dtype: str, rules: str) -> _Model:
    """The model's parts on meta, kept for the next plan of the same model (the app re-plans on every edit)."""
    from optim.models import resolve_model

    return _Model(resolve_model(model_name), dtype, rules)


def _run(model: _Model, **given: Any) -> Any:
    """The run settings a plan uses: those given, else the model's own."""
    from types import SimpleNamespace

    defaults = _defaults(model.ref, model.family)
    pick = {key: given.get(key) or defaults.get(key) for key in ("width", "height", "steps", "num_frames",
                                                                   "max_sequence_length")}
    scale = given.get("guidance_scale")
    return SimpleNamespace(**pick, guidance_scale=defaults["guidance_scale"] if scale is None else scale)


def scheme_of(quantization: Any) -> str:
    """The `SCHEMES` key that stores weights as the lab's quantization section `quantization` does (the dynamic
    torchao variants store the same weights as the weight-only ones; FP4 with double quantization the same bytes
    as NF4 with it)."""
    backend = quantization.backend
    if backend == "none":
        return "none"
    if backend == "bitsandbytes_4bit":
        if quantization.double_quant:
            return "bnb_nf4_dq"
        return f"bnb_{quantization.quant_type}"
    if backend == "bitsandbytes_8bit":
        return "bnb_int8"
    if backend == "torchao":
        return "torchao_fp8" if quantization.quant_type.startswith("float8") else "torchao_int8"
    if backend == "quanto":
        return {"float8": "quanto_fp8"}.get(quantization.weights, f"quanto_{quantization.weights}")
    if backend == "layerwise_casting":
        return "layerwise_fp8"
    raise ValueError(f"no storage scheme for quantization backend {backend!r}")


def offload_of(offload: Any) -> str:
    """The `OFFLOADS` key of the lab's offload section."""
    if offload.mode != "group":
        return offload.mode
    kind = "leaf" if offload.offload_type == "leaf_level" else "block"
    return f"group_{kind}" + ("_stream" if offload.use_stream else "")


def predict(run: Any, optim: Any, gpu: str | Card, *, rules: str = "installed") -> Option:
    """The prediction for one side: the lab's run settings (`RunSpec`) and optimizations (`OptimConfig`) on the
    card `gpu`. A run dtype of "auto" is planned at bfloat16 (what the lab picks on a GPU). Raises `ConfigError`
    for a model with no configs on this machine."""
    from optim.errors import ConfigError, OptimError

    card = gpu if isinstance(gpu, Card) else parse_card(gpu)
    dtype = "bfloat16" if run.dtype == "auto" else run.dtype
    try:
        model = _model(run.model, dtype, rules)
        planned = _run(model, width=run.width, height=run.height, steps=run.steps, num_frames=run.num_frames,
                       max_sequence_length=run.max_sequence_length, guidance_scale=run.guidance_scale)
    except OptimError:
        raise
    except Exception as error:  # noqa: BLE001 - no published configs here (an unknown Hub model)
        raise ConfigError(f"no configs for {run.model!r} on this machine to plan from ({error})") from error
    scheme = scheme_of(optim.quantization)
    components = tuple(c for c in getattr(optim.quantization, "components", ()) if c in model.parts) \
        if scheme != "none" else ()
    if scheme != "none" and not components:
        scheme = "none"
    return evaluate(model, planned, card, scheme, components, offload_of(optim.offload), optim.vae.tiling,
                    attention=optim.attention.backend, cache=optim.cache, guidance=_guidance(model))


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
    loaded = next((o for o in result.options if o.settings == {"offload": {"mode": "none"}}), None)
    if loaded is not None:
        lines += ["", f"as loaded ({loaded.label}): {loaded.peak_gib:.2f} GiB peak, "
                      + ("fits" if loaded.fits else "does not fit")]
    lines += ["", f"{len(fits)} of {len(result.options)} combinations fit (peak + 0.5 GiB CUDA context + 5% "
                  "allocator margin), fastest expected first:"]
    for option in fits[:top]:
        lines.append(f"  {option.peak_gib:6.2f} GiB peak, {option.load_peak_bytes / GIB:6.2f} while loading, "
                     f"{option.host_bytes / GIB:6.2f} host: {option.label}")
        lines.append(f"      {option.reason}")
    if not fits:
        lines.append("  none: the smallest need is below")
    closest = result.closest_misses()
    if closest:
        lines += ["", "does not fit (the fastest kinds):"]
        for option in closest:
            lines.append(f"  {option.need_bytes / GIB:6.2f} GiB needed: {option.label}")
    lines += ["", "every term of every combination: --json"]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ the two sides


@dataclass
class SidesFit:
    """Both sides of a comparison on one card: each side's prediction, and what to try where one does not fit."""

    card: Card
    baseline: Option
    optimized: Option
    suggestion: str | None  # the fastest combination that fits, for a side that does not
    identical: bool = False  # the optimized side changes nothing: both sides are the baseline

    def refusal(self) -> str | None:
        """A message naming the side that cannot fit and what to try; None when both fit. The baseline first: it
        is the model as loaded, and no optimization of the other side makes it fit."""
        where = self.card.note or self.card.name
        has = f"{where} has {self.card.memory_gib:.1f}"
        baseline = self.baseline
        if not baseline.fits:
            side = "each side needs" if self.identical else "the baseline side needs"
            if with_margins(baseline.after_load_bytes) > self.card.memory_bytes:
                hint = (f"the baseline is the model as loaded, and its weights alone take "
                        f"{baseline.after_load_bytes / GIB:.1f} GiB: compare on a larger GPU (the Will it fit? tab "
                        "lists what fits this one)")
            else:
                hint = "the baseline is the model as loaded and must run too: lower the resolution or the frames"
            return (f"{side} about {baseline.card_bytes / GIB:.1f} GiB of GPU memory (with the CUDA context and the "
                    f"allocator's margin), {has}; {hint}")
        if not self.optimized.fits:
            hint = f": try {self.suggestion}" if self.suggestion else ""
            return (f"the optimized side needs about {self.optimized.card_bytes / GIB:.1f} GiB of GPU memory (with the "
                    f"CUDA context and the allocator's margin), {has}{hint}")
        return None


def predict_sides(run: Any, optim: Any, gpu: str | Card, *, suggest: bool = True) -> SidesFit:
    """`predict` for the baseline (no optimizations) and the optimized side, with a suggestion from the plan
    (every combination: seconds) when the optimized side does not fit and `suggest`."""
    from optim.config import OptimConfig

    card = gpu if isinstance(gpu, Card) else parse_card(gpu)
    baseline, optimized = predict(run, OptimConfig(), card), predict(run, optim, card)
    suggestion = None
    if suggest and not optimized.fits:
        dtype = "bfloat16" if run.dtype == "auto" else run.dtype
        fits = plan(run.model, card, width=run.width, height=run.height, steps=run.steps, num_frames=run.num_frames,
                    max_sequence_length=run.max_sequence_length, dtype=dtype, guidance_scale=run.guidance_scale,
                    attention=optim.attention.backend, cache=optim.cache).fits
        suggestion = fits[0].label if fits else None
    return SidesFit(card, baseline, optimized, suggestion, identical=optim == OptimConfig())
