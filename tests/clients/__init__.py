"""Tests of the platform API clients, the shared transport and the rate limiter."""
