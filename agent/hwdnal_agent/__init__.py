"""hwdnal-agent: times and builds networks on the device for a hwdnal workstation.

It runs where the network will be deployed (a Jetson, an ARM board, a GPU server, this
CPU) with Python >= 3.8 and no torch: numpy plus the device's runtime. The workstation
sends ONNX bytes, engine bytes and numpy arrays; the agent answers with timings, engines
and outputs. Its runtime and timing code is also what hwdnal uses for local targets, so
a latency means the same thing wherever it was taken.
"""

__version__ = "0.2.0"
#: the wire protocol's version; a client and an agent of different versions refuse each other
PROTOCOL_VERSION = 2  # 2: timing settings carry burst_seconds
