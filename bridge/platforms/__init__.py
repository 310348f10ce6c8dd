"""Everything that speaks a platform's language: webhook verification and parsing, API clients."""
