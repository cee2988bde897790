"""Is the server up and its model loaded? Exits 0 when it reports SERVING.

    python examples/health.py --server 127.0.0.1:50051
"""
import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

parser = argparse.ArgumentParser()
parser.add_argument("--server", default="127.0.0.1:50051")
args = parser.parse_args()

channel = grpc.insecure_channel(args.server)
health = health_pb2_grpc.HealthStub(channel)
answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
print(f"{args.server}: {status}")
sys.exit(0 if answer.status == health_pb2.HealthCheckResponse.SERVING else 1)
