"""High-availability tests: reconciliation, retention, replicas sharing one PostgreSQL."""
