"""The bridge's memory: ID links, the durable inbox and outbox, dead letters, echo records.

`base` holds the typed rows and the `Store` protocol the pipeline depends on; `sql` is the
one implementation, on SQLAlchemy 2 Core, for SQLite and PostgreSQL alike.
"""
