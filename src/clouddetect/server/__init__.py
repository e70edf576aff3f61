"""Serving the Flask app with hypercorn: requests are read on an event loop, then served one per thread.

A slow client must not hold a request thread, an admission slot or an unbounded wait. hypercorn reads a request on
its asyncio loop and runs a WSGI app in the loop's executor only once the whole body has arrived; here that executor
is a pool of ``threads`` threads, and every wait of a connection is bounded by a setting:
- headers: complete within ``header_timeout_s`` of the connection's opening or its previous answer, else closed;
- idle keep-alive: a connection that sends nothing for ``keepalive_s`` is closed;
- body: ``header_timeout_s`` plus its size at ``min_body_rate_bytes_per_s``, at most ``body_timeout_s``, else 408;
- answers: a client that does not take an answer's bytes within ``send_timeout_s`` is cut off;
- connections: past ``max_connections`` per worker a new one is closed at once.
Each slow client is logged once, with its address. All server tuning is derived from ``Settings`` here, so the CLI,
the image and the manifests never repeat it. Each worker process loads the model once and warms it up in the
background: ``/healthz`` answers at once, ``/readyz`` only after the first inference.

- ``bridge``: the WSGI app bridged from ASGI: the body read within its deadline and byte bound, the answer made on a
  request thread;
- ``connections``: a connection's life in hypercorn: its config, its idle, header and send deadlines, its close when
  the worker stops (every use of hypercorn's internals is there);
- ``workers``: a worker process (its app, its loop, its signals) and the forking and supervising of several.
"""

from clouddetect.server.workers import serve

__all__ = ["serve"]
