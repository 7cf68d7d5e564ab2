"""Infrastructure every role stands on: the Redis connection (``connect``), the embedded
per-user server (``embedded``), the one ``redis-server`` launcher (``server``), and the
check of a server's persistence (``persistence``)."""
