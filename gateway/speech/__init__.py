"""The speech side endpoints (issue 13): the HTTP speech APIs clients already call, served from the same process
and the same loaded engines as the realtime sessions. ``routes`` gathers them; each module owns one API family."""
