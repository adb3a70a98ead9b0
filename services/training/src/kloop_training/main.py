"""`kloop-training`: the training service's process entry point."""

from __future__ import annotations

from kloop_core.settings import load_settings
from kloop_training.settings import TrainingSettings


def main() -> None:
    settings = load_settings(TrainingSettings)
    # Imported after the settings are validated: the app pulls in MLflow, ONNX and
    # onnxruntime (seconds of imports), and a bad variable should be reported at once.
    from kloop_core.grpc_server import run_service
    from kloop_training.grpc_server import create_app

    run_service(create_app(settings))


if __name__ == "__main__":
    main()
