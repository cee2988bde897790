"""Inspects every image in a folder over one InspectStream, several frames in
flight, and prints one line a frame in order. Exits 1 when any part failed.

    python examples/stream.py --server 127.0.0.1:50051 --recipe demo PARTS_DIR
"""
import argparse
import pathlib
import sys

import grpc
from loupe.v1 import inspection_pb2 as i, inspection_pb2_grpc
from loupe.v1 import types_pb2 as t

parser = argparse.ArgumentParser()
parser.add_argument("--server", default="127.0.0.1:50051")
parser.add_argument("--recipe", default="demo")
parser.add_argument("parts", type=pathlib.Path)
args = parser.parse_args()

channel = grpc.insecure_channel(args.server, options=[("grpc.max_send_message_length", 64 << 20)])
inspection = inspection_pb2_grpc.InspectionStub(channel)

files = sorted(p for p in args.parts.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".bmp"})
requests = (
    i.InspectRequest(recipe=args.recipe, frame=t.Frame(encoded=p.read_bytes()), frame_id=str(p.relative_to(args.parts)))
    for p in files
)
failed = 0
for reply in inspection.InspectStream(requests, timeout=600):
    if reply.HasField("error"):
        print(f"{reply.frame_id}: ERROR {reply.error.message}")
        continue
    failed += reply.verdict == t.VERDICT_FAIL
    print(f"{reply.frame_id}: {t.Verdict.Name(reply.verdict)} score {reply.score:.4f}")
print(f"{len(files)} frames, {failed} failed")
sys.exit(1 if failed else 0)
