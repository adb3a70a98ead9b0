"""kloop_model: the sentiment model (NumPy bag-of-words + logistic regression), its
datasets, metrics, self-contained ONNX export and drift reference profile.

Modules: `text` (the one tokenizer), `dataset`, `classifier`, `metrics`, `onnx_export`,
`profile`. Pure logic: no network, no servers; file I/O only where a path is given.
"""

from kloop_model.classifier import SentimentClassifier, TrainingParams
from kloop_model.dataset import Dataset, DatasetError, Example

__all__ = ["Dataset", "DatasetError", "Example", "SentimentClassifier", "TrainingParams"]
