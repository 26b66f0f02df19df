"""The body of ``POST /v1/contacts:batch``, checked whole before anything is written.

    {"tenant": "acme", "source": "crm", "generation": "9f…",        (tenant, generation
     "upserts": [{"number": "+31612345678", "fields": {"name": "…"}}],   optional)
     "deletes": ["+31612345679"]}

Only the tenant's configured contact fields are accepted: an unknown field is refused
(naming it), never silently stored or dropped, so a mapping that exports too much is
noticed at once. Values are scalars; strings are at most `MAX_VALUE` characters.
A number may appear once per batch.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from gateway.recognition import keys
from gateway.recognition.cache import Scalar
from gateway.recognition.index import Upsert
from gateway.recognition.numbers import is_e164

MAX_VALUE = 512
_KNOWN = ("tenant", "source", "generation", "upserts", "deletes")


class BatchError(Exception):
    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")


class TooLarge(BatchError):
    """More items than one batch may carry (HTTP 413, not 422)."""


@dataclass(frozen=True, slots=True)
class Batch:
    tenant: str | None
    source: str
    generation: str | None
    upserts: tuple[Upsert, ...]
    deletes: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.upserts) + len(self.deletes)


def parse_batch(data: object, fields: Collection[str], max_items: int) -> Batch:
    if not isinstance(data, Mapping):
        raise BatchError("body", "must be a JSON object")
    for name in data:
        if name not in _KNOWN:
            raise BatchError(str(name)[:64], f"unknown field (known: {', '.join(_KNOWN)})")
    tenant = data.get("tenant")
    if tenant is not None and not isinstance(tenant, str):
        raise BatchError("tenant", "must be a string")
    source = data.get("source")
    if not keys.is_source_id(source):
        raise BatchError("source", "must be 1-64 of a-z, 0-9, '.', '_', '-', starting alphanumeric")
    assert isinstance(source, str)
    generation = data.get("generation")
    if generation is not None and not keys.is_generation(generation):
        raise BatchError("generation", "must be 1-64 of A-Z, a-z, 0-9, '_', '-'")
    upserts = _list(data, "upserts")
    deletes = _list(data, "deletes")
    if len(upserts) + len(deletes) > max_items:
        raise TooLarge("body", f"at most {max_items} upserts and deletes together")
    seen: set[str] = set()
    parsed = tuple(_upsert(item, f"upserts[{i}]", fields, seen) for i, item in enumerate(upserts))
    removed = tuple(_number(item, f"deletes[{i}]", seen) for i, item in enumerate(deletes))
    return Batch(tenant, source, generation, parsed, removed)


def _list(data: Mapping[str, object], name: str) -> list[object]:
    value = data.get(name, [])
    if not isinstance(value, list):
        raise BatchError(name, "must be an array")
    return value


def _number(value: object, where: str, seen: set[str]) -> str:
    if not isinstance(value, str) or not is_e164(value):
        raise BatchError(where, 'must be a number in E.164 form, like "+31612345678"')
    if value in seen:
        raise BatchError(where, f"{value[:4]}… appears twice in this batch")
    seen.add(value)
    return value


def _upsert(item: object, where: str, fields: Collection[str], seen: set[str]) -> Upsert:
    if not isinstance(item, Mapping):
        raise BatchError(where, 'must be an object {"number": …, "fields": {…}}')
    for name in item:
        if name not in ("number", "fields"):
            raise BatchError(f"{where}.{str(name)[:64]}", "unknown field (known: number, fields)")
    number = _number(item.get("number"), f"{where}.number", seen)
    values = item.get("fields", {})
    if not isinstance(values, Mapping):
        raise BatchError(f"{where}.fields", "must be an object")
    checked: dict[str, Scalar] = {}
    for name, value in values.items():
        at = f"{where}.fields.{str(name)[:64]}"
        if name not in fields:
            configured = ", ".join(fields) or "none"
            raise BatchError(at, f"not a configured contact field (configured: {configured})")
        checked[name] = _scalar(value, at)
    return Upsert(number, checked)


def _scalar(value: object, where: str) -> Scalar:
    if isinstance(value, float) and not math.isfinite(value):
        raise BatchError(where, "must be a finite number")
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        if len(value) > MAX_VALUE:
            raise BatchError(where, f"longer than {MAX_VALUE} characters")
        return value
    raise BatchError(where, "must be a string, number, boolean or null")
