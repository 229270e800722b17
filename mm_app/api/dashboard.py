"""``GET /dashboard``: the operator's page, server-rendered, with a small script that polls ``/stats``.

The page itself holds no data and needs no token; it asks for one, keeps it in ``sessionStorage``
(gone when the tab closes) and sends it as a bearer header, so a user sees their own numbers and an
admin sees everyone's. Its script, style sheet and Chart.js are served from this package (no CDN:
these machines have no internet).
"""

from __future__ import annotations

from flask import Blueprint, Response, render_template

from minimodal.protocol import CallStatus

from .schema import Doc

bp = Blueprint(
    "dashboard", __name__, static_folder="static", static_url_path="/dashboard/static", template_folder="templates"
)
doc = Doc("operations", security="none")
# Flask adds the static route when the blueprint is registered, with this attribute as its view.
bp.send_static_file = doc(  # type: ignore[method-assign]
    "The dashboard's script, style sheet and charting library",
    reply=bytes,
    media="application/octet-stream",
    errors=(404,),
    params={"filename": "file name"},
)(bp.send_static_file)

POLL_SECONDS = 1.5  # how often the page asks /stats; the issue asks for 1-2 s
SHOWN_STATUSES = ("queued", "running", "completed", "failed", "dead_letter")  # the cards and the chart's series
CHART_JS = "chart.umd.min.js"  # Chart.js 4.6.1, MIT licence (npm pack chart.js@4.6.1, dist/chart.umd.min.js)
# Everything comes from this origin; the script writes text only (textContent), never markup.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)

assert set(SHOWN_STATUSES) <= {s.value for s in CallStatus}


@bp.get("/dashboard")
@doc("The operator's dashboard (HTML; asks for a token, then polls /stats)", reply=str, media="text/html")
def dashboard() -> Response:
    page = render_template(
        "dashboard.html", statuses=SHOWN_STATUSES, poll_ms=int(POLL_SECONDS * 1000), chart_js=CHART_JS
    )
    response = Response(page, mimetype="text/html")
    response.headers["Content-Security-Policy"] = _CSP
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
