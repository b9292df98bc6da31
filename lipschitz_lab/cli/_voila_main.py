"""Voilà's server as ``lipschitz-lab app`` starts it: ``python -m lipschitz_lab.cli._voila_main ARGS``.

1) Voilà's server imports jsonschema's IRI checker, ~2 s of Lark grammars, for event schemas
   that use no IRI format (jupyter_server#1559): it is kept out of the import.
2) A page closed while its run streams leaves tornado writing to a closed websocket; the
   write's task then fails with ``WebSocketClosedError`` and asyncio prints its traceback in
   the terminal ("Task exception was never retrieved").  Nothing is lost (the page is gone,
   its kernel shuts down), so exactly those are not printed; every other one still is.
"""
from __future__ import annotations

import asyncio
import sys


def _quiet_closed_sockets(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    from tornado.iostream import StreamClosedError
    from tornado.websocket import WebSocketClosedError
    if isinstance(context.get("exception"), (WebSocketClosedError, StreamClosedError)):
        return
    loop.default_exception_handler(context)


def main() -> int:
    sys.modules["rfc3987_syntax"] = None          # 1)
    loop = asyncio.new_event_loop()               # 2) the loop tornado, hence Voilà, will run on
    loop.set_exception_handler(_quiet_closed_sockets)
    asyncio.set_event_loop(loop)
    from voila.app import main as voila
    return voila()


if __name__ == "__main__":
    sys.exit(main())
