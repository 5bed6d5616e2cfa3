"""A small local OpenAI-compatible stub server for the faults a real server cannot be made to show
on demand (429 bursts, a refused prompt, a server that vanishes). It answers deterministically:
the completion is ``"echo: " + the last user message`` (or the prompt), so order is checkable.

Only 127.0.0.1, an OS-chosen port, bounded by the test's own requests.
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class StubState:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests = 0
        self.fail_first = 0          # answer 429 to this many requests first
        self.fail_status = 429
        self.in_flight = 0
        self.peak = 0
        self.delay = 0.0             # seconds each answer takes
        self.seen_seeds: list = []
        self.bodies: list = []


def start_stub(state: StubState) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def _send(self, code: int, obj: dict, headers: dict | None = None) -> None:
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path.endswith("/models"):
                self._send(200, {"data": [{"id": "stub-model"}]})
            else:
                self._send(404, {"error": {"message": "no such path"}})

        def do_POST(self):
            import time

            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            with state.lock:
                state.requests += 1
                number = state.requests
                state.in_flight += 1
                state.peak = max(state.peak, state.in_flight)
                state.bodies.append(body)
            try:
                if state.delay:
                    time.sleep(state.delay)
                if number <= state.fail_first:
                    self._send(state.fail_status, {"error": {"message": "slow down"}}, {"Retry-After": "0"})
                    return
                if self.path.endswith("/chat/completions"):
                    text = body["messages"][-1]["content"]
                else:
                    text = body["prompt"] if isinstance(body["prompt"], str) else " ".join(map(str, body["prompt"]))
                if "TOO LONG" in text:
                    self._send(400, {"error": {"message": "This model's maximum context length is 64 tokens."}})
                    return
                answer = "echo: " + text
                words = answer.split()
                finish = "stop"
                if len(words) > body.get("max_tokens", 256):
                    answer, finish = " ".join(words[: body["max_tokens"]]), "length"
                state.seen_seeds.append(body.get("seed"))
                choice = ({"message": {"role": "assistant", "content": answer}} if self.path.endswith("/chat/completions")
                          else {"text": answer})
                choice.update(index=0, finish_reason=finish)
                self._send(200, {"choices": [choice], "usage": {"prompt_tokens": len(text.split()),
                                                                "completion_tokens": len(answer.split())}})
            finally:
                with state.lock:
                    state.in_flight -= 1

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.handle_error = lambda *args: None  # a client that hung up (a test that stops early)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1"
