"""Rootly: the REST API client (`client`, `models`) and webhook verification/parsing (`webhook`)."""
