"""Creates the Damselfly S3 bucket and SNS topic in LocalStack (idempotent) and prints the topic ARN.

Run by localstack/up with the LocalStack venv's Python (which has boto3). Progress goes to
stderr; the only line on stdout is the SNS topic ARN.
"""

import argparse
import sys
import time

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError


def ensure_bucket(s3, bucket: str) -> None:
    try:
        s3.create_bucket(Bucket=bucket)  # us-east-1: no LocationConstraint
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
            raise
    s3.head_bucket(Bucket=bucket)


def ensure_topic(sns, name: str) -> str:
    arn = sns.create_topic(Name=name)["TopicArn"]  # returns the existing topic if there is one
    sns.get_topic_attributes(TopicArn=arn)
    return arn


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", default="http://127.0.0.1:4566")
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--bucket", default="damselfly-lake")
    parser.add_argument("--sns-topic", default="damselfly-alarms")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to keep retrying")
    args = parser.parse_args()

    session = boto3.session.Session(
        aws_access_key_id="test", aws_secret_access_key="test", region_name=args.region
    )
    config = Config(
        connect_timeout=5,
        read_timeout=30,
        retries={"max_attempts": 2, "mode": "standard"},
        s3={"addressing_style": "path"},
    )
    s3 = session.client("s3", endpoint_url=args.endpoint, config=config)
    sns = session.client("sns", endpoint_url=args.endpoint, config=config)

    deadline = time.monotonic() + args.timeout
    while True:
        try:
            ensure_bucket(s3, args.bucket)
            arn = ensure_topic(sns, args.sns_topic)
            break
        except (BotoCoreError, ClientError) as err:
            if time.monotonic() >= deadline:
                print(f"bootstrap: giving up: {err}", file=sys.stderr)
                return 1
            print(f"bootstrap: retrying: {err}", file=sys.stderr)
            time.sleep(1)

    print(f"bootstrap: S3 bucket {args.bucket} and SNS topic {arn} are in place", file=sys.stderr)
    print(arn)
    return 0


if __name__ == "__main__":
    sys.exit(main())
