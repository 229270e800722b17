"""MiniModal: self-hosted serverless Python with Modal's API (``import minimodal as modal``)."""

from . import cls, config, exception, functions, schedule
from .app import App, LocalEntrypoint
from .cls import Cls, enter, exit, method, parameter
from .exception import Error
from .functions import Function, FunctionCall
from .image import Image
from .retries import Retries
from .runtime import current_function_call_id, current_input_id, enable_output, is_local
from .schedule import Cron, Period

__version__ = "0.1.0"

__all__ = [
    "App",
    "Cls",
    "Cron",
    "Error",
    "Function",
    "FunctionCall",
    "Image",
    "LocalEntrypoint",
    "Period",
    "Retries",
    "cls",
    "config",
    "current_function_call_id",
    "current_input_id",
    "enable_output",
    "enter",
    "exception",
    "exit",
    "functions",
    "is_local",
    "method",
    "parameter",
    "schedule",
]
