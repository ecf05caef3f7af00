"""rtserve's live log: lines held for the end of a loop turn (one write for many access log
lines), written at once outside a loop and for warnings, in order."""

from __future__ import annotations

import asyncio
import io
import logging

from rtserve.logs import FORMAT, SecondFormatter, TurnBufferedHandler


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def make_logger(name: str) -> tuple[logging.Logger, CountingStream]:
    stream = CountingStream()
    handler = TurnBufferedHandler(stream)
    handler.setFormatter(SecondFormatter(FORMAT, "%H:%M:%S"))
    logger = logging.getLogger(f"tests.logs.{name}")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger, stream


def test_lines_of_one_loop_turn_are_written_once_at_its_end() -> None:
    logger, stream = make_logger("turn")

    async def main() -> None:
        for i in range(100):
            logger.info("request %d", i)
        assert stream.writes == 0  # held until the turn ends
        await asyncio.sleep(0)
        assert stream.writes == 1
        logger.info("next turn")
        await asyncio.sleep(0)
        assert stream.writes == 2

    asyncio.run(main())
    lines = stream.getvalue().splitlines()
    assert [line.split()[-1] for line in lines] == [*map(str, range(100)), "turn"]
    assert all(" INFO    tests.logs.turn " in line for line in lines)


def test_outside_a_loop_and_for_warnings_a_line_is_written_at_once() -> None:
    logger, stream = make_logger("now")
    logger.info("no loop")
    assert stream.getvalue().endswith("no loop\n")

    async def main() -> None:
        logger.info("held")
        logger.warning("at once")
        assert stream.getvalue().endswith("held\n" + stream.getvalue().splitlines()[-1] + "\n")
        assert stream.getvalue().splitlines()[-1].endswith("at once")

    asyncio.run(main())


def test_a_full_hold_is_written_without_waiting_for_the_turn() -> None:
    logger, stream = make_logger("full")

    async def main() -> None:
        for i in range(2000):
            logger.info("line %d", i)
        assert stream.getvalue().count("\n") >= 1536  # at most 512 held

    asyncio.run(main())
    assert stream.getvalue().count("\n") == 2000


def test_the_time_is_formatted_per_record_second() -> None:
    formatter = SecondFormatter(FORMAT, "%H:%M:%S")
    first = logging.LogRecord("x", logging.INFO, "f", 1, "m", None, None)
    later = logging.LogRecord("x", logging.INFO, "f", 1, "m", None, None)
    later.created = first.created + 2
    assert formatter.formatTime(first, "%H:%M:%S") != formatter.formatTime(later, "%H:%M:%S")


def test_a_loop_closed_before_its_turn_ended_does_not_hold_later_lines() -> None:
    logger, stream = make_logger("closed")
    loop = asyncio.new_event_loop()
    loop.call_soon(logger.info, "held when the loop stopped")
    loop.call_soon(loop.stop)
    loop.run_forever()  # the end-of-turn write was scheduled, and never runs
    loop.close()

    async def main() -> None:
        logger.info("in the next loop")
        await asyncio.sleep(0)
        assert stream.getvalue().endswith("in the next loop\n")

    asyncio.run(main())
    assert "held when the loop stopped" in stream.getvalue()
