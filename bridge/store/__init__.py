"""The bridge's memory: ID links, the durable inbox and outbox, dead letters, echo records.

`base` holds the typed rows and the `Store` protocol the pipeline depends on; `store` is
its one implementation, whose statements (`queries`, `schema`) are written once and run by
one of two thin drivers (`sqlite`, `postgres`).
"""
