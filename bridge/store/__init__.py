"""The bridge's memory: ID links, the durable inbox and outbox, dead letters, echo records.

`store.Store` is what the pipeline depends on and `base` the typed rows it takes and
returns; its statements (`queries`, `schema`) are written once and run by one of two thin
drivers (`sqlite`, `postgres`).
"""
