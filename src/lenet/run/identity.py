"""A job's identity: the complete set of its overrides, normalised. The one owner of "is this the same job?".

Two jobs are the same job only when they set the same keys to the same values, whatever the order of
the overrides, the quoting of strings or the spelling of numbers (``lr=1e-3`` is ``lr=0.001``, ``'a'``
is ``a``, ``+key=v`` is ``key=v``). Every override counts, the device, ``data.root`` and the loggers
included, so two jobs of one sweep never share a folder: only ``trainer.resume`` (how a command asks to
run a job, not what the job is) and Hydra's own keys are left out.

A resume may change some settings without changing the run (``RESUME_MAY_CHANGE``: another device,
another copy of the data, other loggers). Those are ignored only when a resumed job is compared with
its own folder (``same_job(..., resuming=True)``), and only where its sweep does not vary them:
where it does, they tell its jobs apart.
"""

from __future__ import annotations

import json
import math
from typing import Any, Iterable, Optional

Identity = tuple[str, ...]

# how a command asks to run the job, not what the job is
MODE_KEYS = ("trainer.resume",)
# settings a resumed run may change: they do not change its results (a resumed run keeps its thread count from
# its checkpoint), or must be free to (another device, another copy of the data, other loggers, a progress bar)
RESUME_MAY_CHANGE = ("logger", "trainer.resume", "trainer.progress", "device", "data.root", "data.download")


def under(key: str, prefixes: Iterable[str]) -> bool:
    """Whether dotted ``key`` is one of ``prefixes`` or lies below one of them."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _canonical(value: Any) -> Any:
    """A parsed override value in one spelling: integral floats as ints, containers element by element."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() and abs(value) < 2**53 else value
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return str(value)


def _value_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return repr(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def parse(override: str) -> tuple[str, str, bool]:
    """``(key, value in one spelling, deletes)`` of one override; text Hydra's grammar cannot parse is kept as it is."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_override(override)
    except Exception:  # Hydra's parser raises its own kinds; such text never composed, keep it verbatim
        key, _, value = override.partition("=")
        return key.lstrip("+~"), value, override.startswith("~")
    key = parsed.key_or_group if parsed.package is None else f"{parsed.key_or_group}@{parsed.package}"
    if parsed.is_delete():
        return key, "", True
    if parsed.is_sweep_override():
        from hydra.core.override_parser.types import ChoiceSweep

        value = parsed.value()
        if isinstance(value, ChoiceSweep) and not value.tags:  # a list of values in any order: the same values
            return key, ",".join(sorted(parsed.sweep_string_iterator())), False
        return key, parsed.input_line.partition("=")[2].replace(" ", ""), False  # range(...), interval(...), tag(...)
    return key, _value_text(_canonical(parsed.value())), False


def normalised(override: str) -> str:
    """One override in the spelling its identity uses: ``key=value`` (``~key`` for a deletion)."""
    key, value, deletes = parse(override)
    return f"~{key}" if deletes else f"{key}={value}"


def key_of(override: str) -> str:
    """The key or group an override sets or deletes: ``+optimizer.lr=0.1`` -> ``optimizer.lr``."""
    return parse(override)[0]


def job_identity(overrides: Iterable[str]) -> Identity:
    """A job's identity: every task override but Hydra's own and ``trainer.resume``, normalised and sorted."""
    kept = (normalised(o) for o in overrides)
    return tuple(sorted(o for o in kept if not _ignored(o.lstrip("~").partition("=")[0])))


def _ignored(key: str) -> bool:
    return key.startswith("hydra.") or key.startswith("hydra/") or under(key, MODE_KEYS)


def identity_key(entry: str) -> str:
    """The key of one entry of an identity."""
    return entry.lstrip("~").partition("=")[0]


def same_job(recorded: Iterable[str], wanted: Iterable[str], resuming: bool, swept: Optional[Iterable[str]]) -> bool:
    """Whether a folder that recorded the job ``recorded`` (its overrides) holds the job ``wanted``.

    Exactly the same identity; a resumed job may differ in the settings a resume may change, but only in
    those its sweep does not vary (``swept``: the sweep's swept keys; None, not known: no difference allowed).
    """
    a, b = job_identity(recorded), job_identity(wanted)
    if a == b:
        return True
    if not resuming or swept is None:
        return False
    return relaxed(a, swept) == relaxed(b, swept)


def relaxed(identity: Identity, swept: Iterable[str]) -> Identity:
    """``identity`` without the settings a resume may change that the sweep does not vary."""
    varied = set(swept)
    return tuple(e for e in identity if identity_key(e) in varied or not under(identity_key(e), RESUME_MAY_CHANGE))
