"""MiniModal: self-hosted serverless Python with Modal's API (``import minimodal as modal``)."""

from . import config, exception, functions
from .app import App, LocalEntrypoint
from .dict import Dict
from .exception import Error
from .functions import Function, FunctionCall
from .image import Image
from .queue import Queue
from .retries import Retries
from .runtime import current_function_call_id, current_input_id, enable_output, is_local
from .secret import Secret
from .volume import Volume

__version__ = "0.1.0"

__all__ = [
    "App",
    "Dict",
    "Error",
    "Function",
    "FunctionCall",
    "Image",
    "LocalEntrypoint",
    "Queue",
    "Retries",
    "Secret",
    "Volume",
    "config",
    "current_function_call_id",
    "current_input_id",
    "enable_output",
    "exception",
    "functions",
    "is_local",
]
