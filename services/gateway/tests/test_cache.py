from __future__ import annotations

from kloop_gateway.cache import cache_key, decode_score, encode_score


def test_key_names_model_version_and_text() -> None:
    key = cache_key("sentiment", "7", "great food")
    assert key.startswith("kloop:gw:cache:sentiment:7:")
    assert key == cache_key("sentiment", "7", "great food")
    assert key != cache_key("sentiment", "8", "great food")
    assert key != cache_key("other", "7", "great food")
    assert key != cache_key("sentiment", "7", "great food!")


def test_scores_round_trip_exactly() -> None:
    for score in (0.0, 1.0, 0.1234567890123, 1e-300):
        assert decode_score(encode_score(score)) == score
        assert decode_score(encode_score(score).encode()) == score


def test_bad_entries_are_misses() -> None:
    assert decode_score(None) is None
    assert decode_score(b"nan") is None
    assert decode_score(b"garbage") is None
