"""Subscribes a new SQS queue to an SNS topic and prints each message as it arrives (for `damselfly-bench fleet`).

Usage: sqs_watch.py QUEUE_NAME TOPIC_ARN. Prints {"ready": true} once subscribed, then one JSON
line per message: {"recv_ms": <wall-clock ms when received>, "text": <body and attributes>}.
On SIGTERM it unsubscribes and deletes the queue. AWS_* variables (localstack/.env) configure boto3.
"""

import json
import signal
import sys
import time

import boto3

queue, topic_arn = sys.argv[1], sys.argv[2]
sqs = boto3.client("sqs")
sns = boto3.client("sns")
url = sqs.create_queue(QueueName=queue)["QueueUrl"]
queue_arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
sub = sns.subscribe(
    TopicArn=topic_arn,
    Protocol="sqs",
    Endpoint=queue_arn,
    Attributes={"RawMessageDelivery": "true"},
    ReturnSubscriptionArn=True,
)["SubscriptionArn"]


def stop(*_):
    try:
        sns.unsubscribe(SubscriptionArn=sub)
        sqs.delete_queue(QueueUrl=url)
    finally:
        sys.exit(0)


signal.signal(signal.SIGTERM, stop)
print(json.dumps({"ready": True}), flush=True)
while True:
    got = sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1, MessageAttributeNames=["All"]
    ).get("Messages", [])
    now = int(time.time() * 1000)
    for m in got:
        text = m["Body"] + json.dumps(m.get("MessageAttributes", {}))
        print(json.dumps({"recv_ms": now, "text": text}), flush=True)
    if got:
        sqs.delete_message_batch(
            QueueUrl=url,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)],
        )
