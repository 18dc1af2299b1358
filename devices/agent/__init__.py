"""The reference device agent: the phone's side of the lock pipeline, runnable.

``python -m devices.agent --help``. It follows docs/lock-pipeline.md and nothing else, so a
device maker can read it as the executable specification of a finlock phone agent. It
imports no Django and no server module except ``devices.protocol`` (a phone has neither).
"""

from devices.agent.client import ApiError, HttpTransport
from devices.agent.core import APP_VERSION, Agent, AgentError
from devices.agent.offline import CodeResult
from devices.agent.phone import Phone
from devices.agent.render import ScreenView, render_html, render_text
from devices.agent.rules import Outcome

__all__ = [
    "APP_VERSION",
    "Agent",
    "AgentError",
    "ApiError",
    "CodeResult",
    "HttpTransport",
    "Outcome",
    "Phone",
    "ScreenView",
    "render_html",
    "render_text",
]
