"""incident.io: REST API client (`client`, `models`), webhook verification/parsing (`webhook`)."""
