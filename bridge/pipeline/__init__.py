"""From accepted webhook to effect: ingest, dispatcher, echo guard, executor."""
