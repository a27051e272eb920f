"""Durable records of sessions, turns, calls, flows, jobs and recordings (SQLAlchemy 2, async).

The embedded default is a SQLite file in the data directory; PostgreSQL (asyncpg) is a URL away. Nothing on
the audio path waits for the database: sessions hand their records to :class:`storage.writer.WriteQueue`,
which batches them off the event loop.
"""
