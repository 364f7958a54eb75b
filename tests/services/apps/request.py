"""One HTTP request for the services tests run in network namespaces: METHOD URL TOKEN; prints the status code on
the first line and the body after it."""

import sys

import httpx

method, url, token = sys.argv[1:4]
answer = httpx.request(method, url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
print(answer.status_code)
print(answer.text)
