"""Reliability suite: attacks a running bridge the way production will (issue 12)."""
