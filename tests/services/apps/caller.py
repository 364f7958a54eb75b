"""An app that calls a service by name, for the services tests run in network namespaces: resolves NAME with the
node's DNS responder (SERVER:PORT), then asks COUNT times over TCP or UDP ("who"), each on a new connection or
socket, and prints the answers as a JSON list (an empty string for a call that got nothing).

usage: caller.py NAME SERVER DNS_PORT PORT tcp|udp COUNT"""

import json
import socket
import sys

from dnslib import QTYPE, DNSRecord

name, server, dns_port, port, protocol, count = sys.argv[1:7]
reply = DNSRecord.parse(DNSRecord.question(name).send(server, int(dns_port), timeout=5))
address = next(str(rr.rdata) for rr in reply.rr if rr.rtype == QTYPE.A)
answers = []
for _ in range(int(count)):
    try:
        if protocol == "tcp":
            with socket.create_connection((address, int(port)), timeout=10) as sock:
                sock.sendall(b"who")
                answers.append(sock.recv(4096).decode())
        else:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(0.5)
                sock.connect((address, int(port)))
                answer = ""
                for _ in range(20):
                    sock.send(b"who")
                    try:
                        answer = sock.recv(4096).decode()
                        break
                    except TimeoutError:
                        continue
                answers.append(answer)
    except OSError as exc:
        answers.append(f"error {exc}")
print(json.dumps({"address": address, "answers": answers}))
