"""The test harness itself: throwaway servers are real, never 6379, and restartable."""

from tests.redis_harness import FORBIDDEN_PORT, RedisServer


def test_server_when_restarted_with_aof_then_keeps_counter() -> None:
    server = RedisServer(aof=True).start()
    try:
        assert server.port != FORBIDDEN_PORT
        c = server.client()
        assert c.incr("n") == 1
        c.close()
        server.restart()
        c = server.client()
        assert c.incr("n") == 2
        c.close()
    finally:
        server.stop()
