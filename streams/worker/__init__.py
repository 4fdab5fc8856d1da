"""The worker: the Faust app, its agents and timers, and what they do I/O with — Kafka, the
views' reading thread, the clock. Everything they decide is decided by the pure modules of
`streams/` (no I/O, no clock: the clock comes in as a value).
"""
