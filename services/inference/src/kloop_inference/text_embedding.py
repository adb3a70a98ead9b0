"""Text-embedding models: a tokenizer (Hugging Face `tokenizers` JSON) in front of a graph.

A model imported with a tokenizer.json takes `input_ids` (and optionally
`attention_mask`, `token_type_ids`) of shape [batch, sequence]. Served, it takes a BYTES
`text` [n] instead: the texts of a batch are encoded together, padded to the longest of
them and truncated to `max_tokens`, then fed to the graph, whose outputs (e.g. a pooled,
normalized `embedding` [n, 384]) are returned as they are. Padding per batch is exact
for graphs that pool with the attention mask, as exported embedders do.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer

from kloop_inference.tensors import DATATYPES, TensorError, TensorSpec

TEXT_INPUT = TensorSpec("text", "BYTES", (-1,))
TOKENIZER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_INTEGER_DATATYPES = ("INT64", "INT32")

Feed = dict[str, npt.NDArray[Any]]


class TokenizerError(ValueError):
    """A tokenizer.json that cannot be used with its graph."""


class TextEncoder:
    """`text` [n] -> the graph's token tensors. Thread-safe: `encode_batch` keeps no
    state between calls, and padding/truncation are fixed at construction."""

    def __init__(
        self, tokenizer_json: bytes, graph_inputs: tuple[TensorSpec, ...], max_tokens: int
    ) -> None:
        names = [spec.name for spec in graph_inputs]
        if "input_ids" not in names or any(name not in TOKENIZER_INPUTS for name in names):
            raise TokenizerError(
                "a model with a tokenizer must take input_ids (and optionally "
                f"attention_mask, token_type_ids); this one takes {', '.join(names)}"
            )
        for spec in graph_inputs:
            if spec.datatype not in _INTEGER_DATATYPES or len(spec.shape or ()) != 2:
                raise TokenizerError(
                    f"input '{spec.name}' must be INT64 or INT32 of shape [batch, sequence], "
                    f"is {spec.datatype} {list(spec.shape or [])}"
                )
        try:
            tokenizer = Tokenizer.from_str(tokenizer_json.decode("utf-8"))
        except Exception as error:  # tokenizers raises plain Exception on bad JSON
            raise TokenizerError(f"tokenizer.json cannot be loaded: {error}") from None
        # The file's own settings are not trusted for serving (all-MiniLM-L6-v2's says
        # truncation 128 and fixed padding 128): truncate at max_tokens, pad to the longest
        # text of each batch.
        tokenizer.enable_truncation(max_length=max_tokens)
        padding = tokenizer.padding or {}
        pad_token = padding.get("pad_token", "[PAD]")
        pad_id = padding.get("pad_id", tokenizer.token_to_id(pad_token) or 0)
        tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token, length=None)
        self._tokenizer = tokenizer
        self._inputs = tuple((spec.name, DATATYPES[spec.datatype]) for spec in graph_inputs)
        self.max_tokens = max_tokens

    def encode(self, feed: Feed) -> Feed:
        texts = feed[TEXT_INPUT.name].reshape(-1).tolist()
        if not texts:
            raise TensorError(f"input '{TEXT_INPUT.name}' needs at least one text")
        encodings = self._tokenizer.encode_batch(texts)
        columns = {
            "input_ids": [e.ids for e in encodings],
            "attention_mask": [e.attention_mask for e in encodings],
            "token_type_ids": [e.type_ids for e in encodings],
        }
        return {name: np.array(columns[name], dtype=dtype) for name, dtype in self._inputs}
