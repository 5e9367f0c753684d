"""SNS/SQS/SES plumbing for the end-to-end tests, against LocalStack (AWS_ENDPOINT_URL).

  aws.py setup NAME EMAIL   -> {"topic_arn", "queue_url"}: an SNS topic with an SQS and an e-mail subscription
  aws.py drain QUEUE_URL S  -> [{"subject", "message", "attributes"}]: what arrives within S seconds (deleted)
  aws.py ses EMAIL          -> [{"subject", "body"}]: e-mails LocalStack recorded for EMAIL
"""
import json, os, sys, time, urllib.request

import boto3

endpoint = os.environ["AWS_ENDPOINT_URL"]
region = os.environ.get("AWS_REGION", "us-east-1")
kw = dict(endpoint_url=endpoint, region_name=region, aws_access_key_id="test", aws_secret_access_key="test")
cmd = sys.argv[1]
if cmd == "setup":
    name, email = sys.argv[2], sys.argv[3]
    sns, sqs = boto3.client("sns", **kw), boto3.client("sqs", **kw)
    topic = sns.create_topic(Name=name)["TopicArn"]
    queue = sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)
    sns.subscribe(TopicArn=topic, Protocol="email", Endpoint=email)
    print(json.dumps({"topic_arn": topic, "queue_url": queue}))
elif cmd == "drain":
    queue, seconds = sys.argv[2], float(sys.argv[3])
    sqs = boto3.client("sqs", **kw)
    out, deadline = [], time.time() + seconds
    while time.time() < deadline:
        wait = max(0, min(1, int(deadline - time.time())))
        got = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=wait).get("Messages", [])
        for m in got:
            env = json.loads(m["Body"])
            attrs = {k: v.get("Value") for k, v in env.get("MessageAttributes", {}).items()}
            out.append({"subject": env.get("Subject"), "message": env.get("Message"), "attributes": attrs})
            sqs.delete_message(QueueUrl=queue, ReceiptHandle=m["ReceiptHandle"])
    print(json.dumps(out))
elif cmd == "ses":
    email = sys.argv[2]
    with urllib.request.urlopen(f"{endpoint}/_aws/ses", timeout=10) as r:
        msgs = json.load(r).get("messages", [])
    mine = [m for m in msgs if email in (m.get("Destination", {}).get("ToAddresses") or [])]
    print(json.dumps([{"subject": m.get("Subject"), "body": (m.get("Body") or {}).get("text_part")} for m in mine]))
else:
    sys.exit(f"unknown command {cmd}")
