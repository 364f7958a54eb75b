"""An edge app that keeps allocating (and touching) memory until it is stopped."""

import time

print("allocating", flush=True)
chunks = []
for _ in range(200):
    chunks.append(b"x" * (8 << 20))  # written: resident at once
    time.sleep(0.02)
print("still alive after 1.6 GB", flush=True)
time.sleep(60)
