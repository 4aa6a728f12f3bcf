"""A client that stalls mid-body gets a 408 problem and frees the connection; it holds no thread."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from core.settings import Settings
from service.app import create_app
from stack.embedded import free_port


def test_stalled_body_is_a_408_problem(catalog, lite0) -> None:  # lite0: loaded before the clock starts
    app = create_app(Settings(preload_models=False, body_timeout_s=1.0), catalog=catalog)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(100):
            if server.started:
                break
            time.sleep(0.05)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /v1/models/efficientnet-lite0/predict HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"images\": [")
            t0 = time.monotonic()
            answer = s.recv(4096).decode()
            took = time.monotonic() - t0
            head, _, body = answer.partition("\r\n\r\n")
            length = int(head.lower().split("content-length:")[1].split("\r\n")[0])
            while len(body.encode()) < length:  # the body may come in a packet of its own
                body += s.recv(4096).decode()
            answer = head + "\r\n\r\n" + body
        assert answer.startswith("HTTP/1.1 408"), answer[:200]
        assert "application/problem+json" in answer and "request-timeout" in answer
        assert 0.5 < took < 5
    finally:
        server.should_exit = True
        thread.join(10)
