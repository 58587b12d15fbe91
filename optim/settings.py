"""The machinery every settings model is built on: the strict frozen base class, a setting's facts written beside
it (`info(...)` in its `Field`, read back with `facts()`), a technique variant's label and summary (`variant`),
and the small value types several sections share. No torch, no project imports: settings validate anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

# A timestep range as diffusers takes it: (low, high) on the 0-1000 scale of the pipeline's timesteps.
# JSON has no tuples, so the outer container is lax (a list is fine) while the numbers stay strict.
TimestepRange = Annotated[tuple[StrictInt, StrictInt], Field(strict=False)]
SkipRange = Annotated[int, Field(ge=1, le=50)]
Dtype = Literal["float32", "bfloat16", "float16"]


class Settings(BaseModel):
    """Base of every settings model: frozen, strict, no unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def info(label: str, help: str, *, advanced: bool = False, labels: dict[str, str] | None = None,
         cuda: dict[Any, str] | None = None, faster_when_higher: bool = False) -> dict[str, Any]:
    """`Field(**info(...))`: a setting's facts. `labels`: how its choices are shown; `cuda`: the values that need a
    CUDA GPU, each with the reason (a bool field uses the key True); `faster_when_higher`: raising it skips more
    work (faster, lower fidelity), which the tuner uses to bisect it."""
    extra: dict[str, Any] = {"advanced": advanced}
    if faster_when_higher:
        extra["faster_when_higher"] = True
    if labels:
        extra["labels"] = labels
    if cuda:
        extra["needs_cuda"] = {json_key(value): reason for value, reason in cuda.items()}
    return {"title": label, "description": help, "json_schema_extra": extra}


def json_key(value: Any) -> str:
    """A choice value as a JSON object key (True -> 'true')."""
    return value if isinstance(value, str) else repr(value).lower()


def variant(label: str, summary: str) -> ConfigDict:
    """`model_config` of a technique variant (a cache method, a quantization backend): its label and summary."""
    return ConfigDict(title=label, json_schema_extra={"summary": summary})


@dataclass(frozen=True)
class Facts:
    """What the UI, the schema, the capability checks and README know about one setting."""

    label: str
    help: str
    advanced: bool = False
    labels: dict[str, str] = dataclass_field(default_factory=dict)
    needs_cuda: dict[str, str] = dataclass_field(default_factory=dict)
    faster_when_higher: bool = False

    def cuda_reason(self, value: Any) -> str | None:
        """Why `value` needs a CUDA GPU (None: it runs anywhere)."""
        return self.needs_cuda.get(json_key(value))


def facts(cls: type[BaseModel], name: str) -> Facts:
    """The facts of field `name` of settings class `cls`."""
    field_info = cls.model_fields[name]
    extra = field_info.json_schema_extra if isinstance(field_info.json_schema_extra, dict) else {}
    return Facts(
        label=field_info.title or name.replace("_", " ").capitalize(),
        help=field_info.description or "",
        advanced=bool(extra.get("advanced")),
        labels=dict(extra.get("labels") or {}),
        needs_cuda=dict(extra.get("needs_cuda") or {}),
        faster_when_higher=bool(extra.get("faster_when_higher")),
    )


def variant_facts(cls: type[BaseModel]) -> tuple[str, str]:
    """(label, summary) of a technique variant class."""
    extra = cls.model_config.get("json_schema_extra") or {}
    return cls.model_config.get("title") or cls.__name__, str(extra.get("summary", ""))


def _only(names: list[str]) -> str:
    return f"{', '.join(names)} {'applies' if len(names) == 1 else 'apply'} only"


def _check_range(value: tuple[int, int] | None, name: str) -> None:
    if value is None:
        return
    low, high = value
    if not (-1 <= low < high <= 1000):
        raise ValueError(f"{name} must be (low, high) with -1 <= low < high <= 1000, got {list(value)}")
