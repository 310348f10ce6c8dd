"""Tests of the mapping-rules language and the default rules (`bridge.rules`)."""
