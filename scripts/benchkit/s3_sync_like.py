"""The baseline of `scripts/bench copy`: what `aws s3 sync` does between two
S3 endpoints that cannot copy server-side (two regions, two servers). Lists
every object under the source prefix, then copies each with one GET and one
PUT to the target prefix, 4 objects at a time by default: pgpitr copy's
default --parallel (the AWS CLI's own default, max_concurrent_requests, is
10). Whole objects in memory, no multipart, no read-back, no checksum
comparison.

Standalone (boto3 and the standard library only): benchkit runs it with the
interpreter of scripts/setup's moto environment, which has boto3. Keys come
from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (both servers accept the
same). Prints {"objects": N, "bytes": B} as JSON.

    python s3_sync_like.py SRC_ENDPOINT SRC_BUCKET SRC_PREFIX DST_ENDPOINT DST_BUCKET DST_PREFIX [--concurrency N]
"""

import argparse
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor

# botocore ≥ 1.36 adds CRC checksums (and aws-chunked bodies) to every PUT
# unless told otherwise; aws s3 sync to a third-party endpoint is usually run
# so, and s3s-fs need not understand them.
os.environ.setdefault("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
os.environ.setdefault("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required")

import boto3  # noqa: E402
from botocore.config import Config  # noqa: E402


def client(endpoint, concurrency):
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name=os.environ.get("AWS_REGION", "us-east-1"),
        config=Config(s3={"addressing_style": "path"}, max_pool_connections=max(10, concurrency * 2),
                      retries={"max_attempts": 3, "mode": "standard"}))


def main():
    ap = argparse.ArgumentParser()
    for a in ("src_endpoint", "src_bucket", "src_prefix", "dst_endpoint", "dst_bucket", "dst_prefix"):
        ap.add_argument(a)
    ap.add_argument("--concurrency", type=int, default=4)
    a = ap.parse_args()
    src, dst = client(a.src_endpoint, a.concurrency), client(a.dst_endpoint, a.concurrency)
    sp = a.src_prefix.strip("/") + "/" if a.src_prefix.strip("/") else ""
    dp = a.dst_prefix.strip("/") + "/" if a.dst_prefix.strip("/") else ""
    keys = []
    for page in src.get_paginator("list_objects_v2").paginate(Bucket=a.src_bucket, Prefix=sp):
        keys += [(o["Key"], o["Size"]) for o in page.get("Contents", [])]
    lock = threading.Lock()
    total = [0, 0]

    def one(item):
        key, _ = item
        body = src.get_object(Bucket=a.src_bucket, Key=key)["Body"].read()
        dst.put_object(Bucket=a.dst_bucket, Key=dp + key[len(sp):], Body=body)
        with lock:
            total[0] += 1
            total[1] += len(body)

    with ThreadPoolExecutor(a.concurrency) as pool:
        for _ in pool.map(one, keys):
            pass
    print(json.dumps({"objects": total[0], "bytes": total[1], "listed": len(keys)}))


if __name__ == "__main__":
    main()
