"""A version's reference: its training-time profile, ready to compare windows with.

Built from `reference_profile.json` (kloop_model.profile) and, when the version has one,
`model.json`, whose vocabulary tells in-vocabulary from out-of-vocabulary tokens. The
numeric features use the profile's fixed edges (FEATURE_EDGES): a profile with other
edges cannot be compared bin by bin and is refused.

Token distribution: the profile keeps the top-k in-vocabulary tokens' shares of all
tokens and the out-of-vocabulary share; live tokens are counted in the same k + 2
categories (each top-k token, any other in-vocabulary token, out of vocabulary).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from kloop_core.errors import NotFound
from kloop_core.logging import get_logger
from kloop_drift_monitor.tokens import TokenCategories
from kloop_model.profile import FEATURE_EDGES, PROFILE_VERSION
from kloop_model.text import TOKENIZER_ID

log = get_logger(__name__)

NUMERIC_FEATURES: tuple[str, ...] = ("length", "oov_rate", "score")
TEXT_FEATURES: frozenset[str] = frozenset({"oov_rate", "tokens"})


class ReferenceError(ValueError):
    """A profile or model document that cannot serve as a reference."""


@dataclass(frozen=True)
class Reference:
    model: str
    version: str
    sample_count: int
    # Per numeric feature: the reference fractions on FEATURE_EDGES[feature].
    fractions: Mapping[str, npt.NDArray[np.float64]]
    top_tokens: tuple[str, ...]
    # len(top_tokens) + 2: each top token, other in-vocabulary, out of vocabulary.
    token_fractions: npt.NDArray[np.float64]
    # None without model.json: OOV rate and tokens are then not computed.
    vocab: frozenset[str] | None

    @property
    def token_categories(self) -> int:
        return len(self.top_tokens) + 2

    @cached_property
    def categories(self) -> TokenCategories:
        return TokenCategories(self.top_tokens, self.vocab or ())

    @property
    def has_text_features(self) -> bool:
        return self.vocab is not None


def _fractions(profile: Mapping[str, Any], feature: str) -> npt.NDArray[np.float64]:
    try:
        summary = profile["features"][feature]
        edges = [float(edge) for edge in summary["edges"]]
        counts = np.asarray(summary["counts"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as e:
        raise ReferenceError(f"profile feature {feature!r} is malformed: {e!r}") from None
    expected = FEATURE_EDGES[feature]
    if len(edges) != len(expected) or not np.allclose(edges, expected):
        raise ReferenceError(f"profile feature {feature!r} uses other edges than {expected}")
    if counts.shape != (len(expected) - 1,) or (counts < 0).any():
        raise ReferenceError(f"profile feature {feature!r} has invalid counts")
    total = counts.sum()
    return counts / total if total > 0 else counts


def build_reference(
    model: str,
    version: str,
    profile: Mapping[str, Any],
    model_document: Mapping[str, Any] | None,
) -> Reference:
    """The reference of (model, version); ReferenceError if the documents do not fit."""
    if not isinstance(profile, Mapping) or profile.get("profile_version") != PROFILE_VERSION:
        raise ReferenceError(f"not a version {PROFILE_VERSION} reference profile")
    if profile.get("tokenizer") != TOKENIZER_ID:
        raise ReferenceError(f"profile tokenizer {profile.get('tokenizer')!r} is unknown")
    fractions = {feature: _fractions(profile, feature) for feature in NUMERIC_FEATURES}
    tokens = profile.get("tokens")
    if not isinstance(tokens, Mapping) or not isinstance(tokens.get("frequencies"), Mapping):
        raise ReferenceError("profile has no token frequencies")
    top = tuple(str(token) for token in tokens["frequencies"])
    shares = [float(share) for share in tokens["frequencies"].values()]
    oov_mass = float(tokens.get("oov_mass", 0.0))
    other = max(0.0, 1.0 - sum(shares) - oov_mass)
    token_fractions = np.asarray([*shares, other, oov_mass], dtype=np.float64)
    if not np.isfinite(token_fractions).all() or (token_fractions < 0).any():
        raise ReferenceError("profile token frequencies must be non-negative numbers")
    vocab: frozenset[str] | None = None
    if model_document is not None:
        words = model_document.get("vocab") if isinstance(model_document, Mapping) else None
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise ReferenceError("model.json has no vocabulary list")
        vocab = frozenset(words)
    return Reference(
        model=model,
        version=version,
        sample_count=int(profile.get("sample_count", 0)),
        fractions=fractions,
        top_tokens=top,
        token_fractions=token_fractions,
        vocab=vocab,
    )


# --- fetching and caching -----------------------------------------------------------------


class ReferenceSource(Protocol):
    """Where versions' documents come from (the registry, `clients.RegistryClient`)."""

    def reference_documents(
        self, model: str, version: str
    ) -> tuple[Mapping[str, Any], Mapping[str, Any] | None]:
        """(reference_profile.json, model.json or None); NotFound when the version or
        its profile does not exist, Unavailable when the source cannot be reached."""
        ...


class ReferenceCache:
    """References per (model, version), fetched once: a version's artifacts never change.

    A version without a usable reference is remembered as None and asked for again
    after `retry_seconds`; an unreachable source raises (the caller retries the batch).
    """

    def __init__(
        self,
        source: ReferenceSource,
        *,
        retry_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._retry_seconds = retry_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._found: dict[tuple[str, str], Reference] = {}
        self._missing: dict[tuple[str, str], tuple[float, str]] = {}

    def get(self, model: str, version: str) -> Reference | None:
        key = (model, version)
        with self._lock:
            if key in self._found:
                return self._found[key]
            missing = self._missing.get(key)
            if missing is not None and self._clock() < missing[0]:
                return None
        try:
            profile, model_document = self._source.reference_documents(model, version)
            reference = build_reference(model, version, profile, model_document)
        except (NotFound, ReferenceError) as e:
            log.warning("no usable reference", model=model, version=version, error=str(e))
            with self._lock:
                self._missing[key] = (self._clock() + self._retry_seconds, str(e))
            return None
        with self._lock:
            self._found[key] = reference
            self._missing.pop(key, None)
        log.info("reference loaded", model=model, version=version, samples=reference.sample_count)
        return reference

    def problem(self, model: str, version: str) -> str | None:
        """Why the version has no reference (None if it has one or was never asked)."""
        with self._lock:
            missing = self._missing.get((model, version))
        return missing[1] if missing else None

    def loaded(self, model: str, version: str) -> Reference | None:
        with self._lock:
            return self._found.get((model, version))
