from textclf.models.classifier import TextClassifier, build_classifier  # noqa: F401
