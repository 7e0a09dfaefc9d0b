"""Concept erasure for text-to-image diffusion models."""

import logging


class _NoTorchvisionNotice(logging.Filter):
    """transformers warns, on importing diffusers, that its image processors fall back to the PIL
    classes without torchvision. That fallback is this project's setup (../shared/ENVIRONMENT.md), and
    the two lines would precede every one-line `error: ...` a command prints."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed)" not in record.getMessage()


logging.getLogger("transformers.utils.import_utils").addFilter(_NoTorchvisionNotice())

__version__ = "0.1.0"
