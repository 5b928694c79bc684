from .classifier import TextClassifier, build_classifier  # noqa: F401
