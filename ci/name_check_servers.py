"""Loopback servers for static-check.sh's name-resolution step.

A minimal Kubernetes API (every request answers 404 NotFound, so a drain of
any pod ends at once as `pod-gone`) on 127.0.0.1:PORT, and a DNS server on
127.0.0.1:53 that answers A queries for NAME with 127.0.0.1 (NXDOMAIN for
anything else). Both log what they answered to stdout and stop by themselves
after LIFETIME seconds.

    python3 ci/name_check_servers.py PORT NAME LIFETIME
"""

import http.server
import json
import socket
import struct
import sys
import threading
import time


class NotFound(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        body = json.dumps({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "NotFound", "code": 404, "message": "not found",
        }).encode()
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        print(f"api: GET {self.path} -> 404", flush=True)

    def log_message(self, *args: object) -> None:
        pass


def dns(name: str, sock: socket.socket) -> None:
    want = name.lower().rstrip(".")
    while True:
        try:
            data, peer = sock.recvfrom(512)
        except OSError:
            return
        if len(data) < 17:
            continue
        # The question: labels up to the 0 byte, then QTYPE and QCLASS.
        end = data.index(b"\0", 12) + 5
        question = data[12:end]
        labels, i = [], 0
        while question[i]:
            labels.append(question[i + 1:i + 1 + question[i]].decode(errors="replace"))
            i += 1 + question[i]
        qname = ".".join(labels).lower()
        qtype = struct.unpack(">H", question[-4:-2])[0]
        flags, answers = 0x8180, b""
        if qname != want:
            flags = 0x8183  # NXDOMAIN
        elif qtype == 1:
            answers = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton("127.0.0.1")
        count = 1 if answers else 0
        header = data[:2] + struct.pack(">HHHHH", flags, 1, count, 0, 0)
        sock.sendto(header + question + answers, peer)
        print(f"dns: {qname} type {qtype} -> {'127.0.0.1' if answers else 'no address'}", flush=True)


def main() -> None:
    port, name, lifetime = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    api = http.server.ThreadingHTTPServer(("127.0.0.1", port), NotFound)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 53))
    threading.Thread(target=api.serve_forever, daemon=True).start()
    threading.Thread(target=dns, args=(name, udp), daemon=True).start()
    print("ready", flush=True)
    time.sleep(lifetime)


if __name__ == "__main__":
    main()
