"""textclf: a config-driven command-line trainer for transformer text classifiers."""

__version__ = "0.1.0"
