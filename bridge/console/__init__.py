"""The operator console at /console/: what happened to an incident, on both platforms.

Server-rendered HTML (Jinja2 templates in `templates/`, one stylesheet and one small script
in `static/`, served by the bridge itself: no build step, no CDN, works offline). It exists
only when the admin token is set; the token is exchanged for a session cookie
(`bridge.console.session`). Pages: events (search by any ID, filters, a live tail), one
event, an object's timeline across both platforms, dead letters, the outbox, links, the
rules in force with a dry run, and health.
"""

from bridge.console.app import Console, HealthProbe

__all__ = ["Console", "HealthProbe"]
