"""bridge: keeps Rootly and incident.io in step."""

__version__ = "0.1.0"
