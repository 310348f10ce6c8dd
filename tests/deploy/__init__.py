"""Tests of the deployment artefacts: Dockerfile, Helm chart, alerts and dashboard."""
