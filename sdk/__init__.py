"""MiniModal: self-hosted serverless Python with Modal's API (``import minimodal as modal``)."""

from . import cls, concurrency, config, exception, functions, schedule, web
from .app import App, LocalEntrypoint
from .cls import Cls, enter, exit, method, parameter
from .concurrency import batched, concurrent
from .dict import Dict
from .exception import Error
from .functions import Function, FunctionCall
from .image import Image
from .queue import Queue
from .retries import Retries
from .runtime import current_function_call_id, current_input_id, enable_output, is_local
from .sandbox import ContainerProcess, Sandbox, Tunnel
from .schedule import Cron, Period
from .secret import Secret
from .volume import Volume
from .web import asgi_app, fastapi_endpoint, web_endpoint, wsgi_app

__version__ = "0.1.0"

__all__ = [
    "App",
    "asgi_app",
    "batched",
    "Cls",
    "ContainerProcess",
    "Cron",
    "Dict",
    "Error",
    "Function",
    "FunctionCall",
    "Image",
    "LocalEntrypoint",
    "Period",
    "Retries",
    "Sandbox",
    "Tunnel",
    "cls",
    "concurrency",
    "concurrent",
    "Queue",
    "Secret",
    "Volume",
    "config",
    "current_function_call_id",
    "current_input_id",
    "enable_output",
    "enter",
    "exception",
    "exit",
    "fastapi_endpoint",
    "functions",
    "is_local",
    "method",
    "parameter",
    "schedule",
    "web",
    "web_endpoint",
    "wsgi_app",
]
