"""How much time the simulated model adds per request (target: under 2 ms on a 2-core machine).

Side by side in one run, over one keep-alive connection each:
  * the simulator answering real step requests (identification, value reading, oracle,
    fault schedule, logging, JSON encoding);
  * a null server on the same HTTP stack returning a canned reply of the same size.
The difference of the medians is the simulator's own cost; the server-side handler time
from the request log is printed as a cross-check.

Run: .venv/bin/python bench/simulator_overhead.py [--requests 2000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from coordlab.runners.faults import FaultPlan, load_profile
from coordlab.runners.simulator import Simulator
from coordlab.tasks.loader import load_suite_task
from coordlab.tasks.toolbox import builtin_tools


def step_request() -> tuple[str, dict]:
    """A realistic request: the scheduler's first step, with tools and inputs, as a client sends it."""
    task = load_suite_task("appointment_rebooking")
    step = task.step("find_slot")
    body = {"model": "coordlab-sim", "tools": [builtin_tools()[t].openai_spec() for t in task.roles["scheduler"].tools],
            "messages": [{"role": "system", "content": "You are the scheduler. " * 20},
                         {"role": "user", "content": f"{step.instruction} {step.marker}\nInputs: "
                                                     + json.dumps({"customer_id": "C-1042", "after": "2026-11-20"})}]}
    return "scheduler", body


def timed_posts(host: str, port: int, path: str, payload: bytes, count: int) -> list[float]:
    """Round-trip times in ms of ``count`` POSTs over one keep-alive connection."""
    connection = http.client.HTTPConnection(host, port)
    times = []
    for _ in range(count):
        start = time.perf_counter()
        connection.request("POST", path, payload, {"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        times.append((time.perf_counter() - start) * 1000)
        assert response.status == 200, response.status
    connection.close()
    return times


def null_server(reply: bytes) -> ThreadingHTTPServer:
    """The floor: same stdlib HTTP stack, no work, a canned reply."""
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    role, body = step_request()
    payload = json.dumps(body).encode()
    task = load_suite_task("appointment_rebooking")
    with Simulator() as simulator:
        episode = simulator.open_episode(task, FaultPlan(load_profile("semantic_3pct"), 0))
        path = f"/episodes/{episode.id}/roles/{role}/v1/chat/completions"
        timed_posts(simulator.host, simulator.port, path, payload, 50)  # warm-up
        connection = http.client.HTTPConnection(simulator.host, simulator.port)
        connection.request("POST", path, payload, {"Content-Type": "application/json"})
        canned = connection.getresponse().read()
        connection.close()
        floor_server = null_server(canned)
        floor_port = floor_server.server_address[1]
        timed_posts("127.0.0.1", floor_port, "/", payload, 50)
        # Interleave blocks so drift on a shared machine hits both sides alike.
        simulated, floor = [], []
        for _ in range(10):
            simulated += timed_posts(simulator.host, simulator.port, path, payload, args.requests // 10)
            floor += timed_posts("127.0.0.1", floor_port, "/", payload, args.requests // 10)
        floor_server.shutdown()
        handler = statistics.median(r.elapsed_ms for r in episode.records[-args.requests:])
    sim_median, floor_median = statistics.median(simulated), statistics.median(floor)
    added = sim_median - floor_median
    print(f"requests per side:            {len(simulated)}")
    print(f"null server round trip:       median {floor_median:.3f} ms")
    print(f"simulator round trip:         median {sim_median:.3f} ms  (ratio {sim_median / floor_median:.2f}x the floor)")
    print(f"simulator handler time:       median {handler:.3f} ms (server-side, from the request log)")
    print(f"simulator adds per request:   {added:.3f} ms  (target < 2 ms: {'met' if added < 2 else 'MISSED'})")


if __name__ == "__main__":
    main()
