# Deploys infra/template.yaml with boto3: to an AWS account (uploads the zips infra/build made), or with --local to LocalStack (Target=localstack), writing the stack's endpoints to an env file.
"""Deploy Damselfly's CloudFormation stack.

  infra/deploy -p KafkaSource=msk -p MskClusterArn=arn:... -p AlarmEmail=ops@example.com
  infra/deploy --local [--stack-name NAME] [--env-file PATH] [-p Key=Value ...]
  infra/deploy [--local] --delete [--stack-name NAME]

A real deploy uploads infra/dist/*.zip (from infra/build) to an artifact bucket under a prefix
named by their hash, then creates or updates the stack through a change set with the SAM
transform. --local deploys the same template to LocalStack with Target=localstack: the lake
bucket, the SNS topic and its subscriptions, the queues, IAM roles and log groups; no functions.
Parameters you do not pass keep their previous value on an update (their default on a create).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import sys
import time
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, WaiterError

INFRA = Path(__file__).resolve().parent
ROOT = INFRA.parent
TEMPLATE = INFRA / "template.yaml"
BINARIES = ["damselfly-aggregate", "damselfly-alarm", "damselfly-compact", "damselfly-query"]
LOCAL_ENDPOINT = "http://127.0.0.1:4566"
CAPABILITIES = ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"]


class DeployError(Exception):
    """A problem the user can fix; printed without a traceback."""


def say(msg: str) -> None:
    print(f"[deploy] {msg}", file=sys.stderr, flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="infra/deploy",
        description=__doc__.splitlines()[0],
        epilog="\n".join(__doc__.splitlines()[2:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--local", action="store_true", help="deploy to LocalStack (Target=localstack)")
    p.add_argument("--stack-name", help="stack name (default damselfly, or damselfly-local with --local)")
    p.add_argument("-p", "--parameter", action="append", default=[], metavar="KEY=VALUE",
                   help="a template parameter (repeatable); see infra/README.md")
    p.add_argument("--parameters-file", type=Path,
                   help="KEY=VALUE lines (# comments allowed), applied before -p")
    p.add_argument("--region", help="AWS region (default: AWS_REGION / AWS_DEFAULT_REGION / your profile; us-east-1 with --local)")
    p.add_argument("--endpoint", help=f"LocalStack endpoint with --local (default: AWS_ENDPOINT_URL or {LOCAL_ENDPOINT})")
    p.add_argument("--artifact-bucket",
                   help="bucket for the function zips (default damselfly-artifacts-ACCOUNT-REGION, created if missing)")
    p.add_argument("--dist", type=Path, default=INFRA / "dist", help="where infra/build put the zips (default infra/dist)")
    p.add_argument("--env-file", type=Path,
                   help="write the stack's endpoints as shell exports here (default localstack/.env with --local; none otherwise)")
    p.add_argument("--kafka-brokers", help="KAFKA_BROKERS for the env file (default: $KAFKA_BROKERS or 127.0.0.1:9092 with --local)")
    p.add_argument("--kafka-topic", help="KAFKA_TOPIC for the env file (default: $KAFKA_TOPIC or the KafkaTopic parameter)")
    p.add_argument("--delete", action="store_true",
                   help="delete the stack instead (with --local also the retained lake bucket and its objects)")
    p.add_argument("--timeout", type=int, default=1800, help="seconds to wait for the stack (default 1800)")
    args = p.parse_args(argv)
    if args.stack_name is None:
        args.stack_name = "damselfly-local" if args.local else "damselfly"
    if args.env_file is None and args.local:
        args.env_file = ROOT / "localstack" / ".env"
    return args


def parse_parameters(args: argparse.Namespace) -> dict[str, str]:
    params: dict[str, str] = {}
    pairs: list[tuple[str, str]] = []
    if args.parameters_file:
        try:
            text = args.parameters_file.read_text()
        except OSError as e:
            raise DeployError(f"--parameters-file {args.parameters_file}: {e}") from e
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if line and not line.startswith("#"):
                pairs.append((f"{args.parameters_file}:{n}", line))
    pairs += [("-p", v) for v in args.parameter]
    for where, pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise DeployError(f"{where} {pair!r}: expected KEY=VALUE, e.g. -p KafkaTopic=metrics")
        params[key.strip()] = value.strip()
    return params


def clients(args: argparse.Namespace):
    cfg = Config(retries={"max_attempts": 5, "mode": "standard"}, s3={"addressing_style": "path"} if args.local else {})
    if args.local:
        endpoint = args.endpoint or os.environ.get("AWS_ENDPOINT_URL") or LOCAL_ENDPOINT
        session = boto3.session.Session(
            aws_access_key_id="test", aws_secret_access_key="test", region_name=args.region or "us-east-1"
        )
        make = lambda svc: session.client(svc, endpoint_url=endpoint, config=cfg)  # noqa: E731
        return session, make, endpoint
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        raise DeployError(
            f"AWS_ENDPOINT_URL is set ({endpoint}), so this would not reach AWS: "
            "unset it (it comes from localstack/.env) or deploy to LocalStack with --local"
        )
    session = boto3.session.Session(region_name=args.region) if args.region else boto3.session.Session()
    if not session.region_name:
        raise DeployError("no AWS region: pass --region or set AWS_REGION")
    return session, lambda svc: session.client(svc, config=cfg), None


def stack_status(cf, name: str) -> dict | None:
    try:
        return cf.describe_stacks(StackName=name)["Stacks"][0]
    except ClientError as e:
        if "does not exist" in str(e):
            return None
        raise


def failure_events(cf, name: str, since: float) -> list[str]:
    out = []
    try:
        for ev in cf.describe_stack_events(StackName=name)["StackEvents"]:
            if ev["Timestamp"].timestamp() < since - 5:
                break
            if ev.get("ResourceStatus", "").endswith("FAILED"):
                out.append(f"  {ev['LogicalResourceId']} ({ev.get('ResourceType')}): {ev.get('ResourceStatusReason')}")
    except (ClientError, BotoCoreError):
        pass
    return out


def artifact_bucket(args: argparse.Namespace, session, make) -> str:
    """The bucket for the zips and the template: --artifact-bucket, or one per account and region."""
    if args.artifact_bucket:
        return args.artifact_bucket
    s3 = make("s3")
    account = make("sts").get_caller_identity()["Account"]
    bucket = f"damselfly-artifacts-{account}-{session.region_name}"
    try:
        s3.head_bucket(Bucket=bucket)
        return bucket
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
            raise DeployError(f"artifact bucket {bucket}: {e}; pass --artifact-bucket with a bucket you own") from e
    say(f"creating the artifact bucket {bucket}")
    kw = {} if session.region_name == "us-east-1" else {
        "CreateBucketConfiguration": {"LocationConstraint": session.region_name}}
    s3.create_bucket(Bucket=bucket, **kw)
    s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration={
        "BlockPublicAcls": True, "IgnorePublicAcls": True,
        "BlockPublicPolicy": True, "RestrictPublicBuckets": True})
    return bucket


def check_zips(args: argparse.Namespace) -> None:
    missing = [b for b in BINARIES if not (args.dist / f"{b}.zip").is_file()]
    if missing:
        raise DeployError(
            f"no {', '.join(m + '.zip' for m in missing)} in {args.dist}: run infra/build first "
            "(cargo lambda build --release --arm64 of every function, then zips)"
        )


def upload_zips(args: argparse.Namespace, make, bucket: str) -> str:
    """Uploads the function zips under a prefix named by their hash; returns the prefix."""
    check_zips(args)
    digest = hashlib.sha256()
    for b in BINARIES:
        digest.update((args.dist / f"{b}.zip").read_bytes())
    prefix = f"damselfly/{args.stack_name}/{digest.hexdigest()[:16]}"
    s3 = make("s3")
    for b in BINARIES:
        key = f"{prefix}/{b}.zip"
        try:
            s3.head_object(Bucket=bucket, Key=key)
            say(f"s3://{bucket}/{key} is already there")
        except ClientError:
            say(f"uploading {b}.zip to s3://{bucket}/{key}")
            s3.upload_file(str(args.dist / f"{b}.zip"), bucket, key)
    return prefix


def stage_template(args: argparse.Namespace, session, make, bucket: str, endpoint: str | None) -> str:
    """Uploads the template (it is larger than the 51,200 bytes CloudFormation takes inline); returns its URL."""
    body = TEMPLATE.read_bytes()
    key = f"damselfly/{args.stack_name}/template-{hashlib.sha256(body).hexdigest()[:16]}.yaml"
    make("s3").put_object(Bucket=bucket, Key=key, Body=body)
    if endpoint:
        return f"{endpoint.rstrip('/')}/{bucket}/{key}"
    return f"https://{bucket}.s3.{session.region_name}.amazonaws.com/{key}"


def deploy(args: argparse.Namespace, make) -> dict[str, str]:
    cf = make("cloudformation")
    params = parse_parameters(args)
    for fixed in ("Target", "ArtifactBucket", "ArtifactPrefix"):
        if fixed in params:
            raise DeployError(f"-p {fixed}=... is set by infra/deploy itself (use --local / --artifact-bucket)")
    session, endpoint = args._session, args._endpoint
    if not args.local:
        check_zips(args)
    bucket = artifact_bucket(args, session, make)
    if args.local:
        params["Target"] = "localstack"
    else:
        params["Target"] = "aws"
        params["ArtifactBucket"] = bucket
        params["ArtifactPrefix"] = upload_zips(args, make, bucket)
    template_url = stage_template(args, session, make, bucket, endpoint)
    try:
        return create_or_update(args, cf, params, template_url)
    finally:
        if args.local:  # LocalStack keeps everything in memory: do not pile up templates there
            make("s3").delete_object(Bucket=bucket, Key=template_url.split(f"/{bucket}/", 1)[1])


def create_or_update(args: argparse.Namespace, cf, params: dict[str, str], template_url: str) -> dict[str, str]:
    try:
        summary = cf.validate_template(TemplateURL=template_url)
    except ClientError as e:
        raise DeployError(f"CloudFormation rejected {TEMPLATE}: {e}") from e
    declared = {p["ParameterKey"] for p in summary.get("Parameters", [])}
    unknown = sorted(set(params) - declared) if declared else []
    if unknown:
        raise DeployError(f"unknown parameter(s) {', '.join(unknown)}; the template declares: {', '.join(sorted(declared))}")

    existing = stack_status(cf, args.stack_name)
    if existing and existing["StackStatus"] in ("ROLLBACK_COMPLETE", "ROLLBACK_FAILED", "CREATE_FAILED"):
        raise DeployError(
            f"stack {args.stack_name} is {existing['StackStatus']} from a failed create: "
            f"delete it (infra/deploy {'--local ' if args.local else ''}--delete --stack-name {args.stack_name}) and deploy again"
        )
    kind = "UPDATE" if existing else "CREATE"
    plist = [{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()]
    if existing:
        for p in existing.get("Parameters", []):
            if p["ParameterKey"] not in params and (not declared or p["ParameterKey"] in declared):
                plist.append({"ParameterKey": p["ParameterKey"], "UsePreviousValue": True})

    started = time.time()
    change_set = f"deploy-{int(started)}"
    say(f"{kind.lower()} stack {args.stack_name} (change set {change_set})")
    try:
        cf.create_change_set(
            StackName=args.stack_name, ChangeSetName=change_set, ChangeSetType=kind,
            TemplateURL=template_url, Parameters=plist, Capabilities=CAPABILITIES,
            Tags=[{"Key": "app", "Value": "damselfly"}],
        )
    except ClientError as e:
        # The template's Rules (e.g. "KafkaSource=msk needs MskClusterArn") fail here, with their text.
        raise DeployError(f"CloudFormation refused the change set: {e.response.get('Error', {}).get('Message', e)}") from e
    try:
        cf.get_waiter("change_set_create_complete").wait(
            StackName=args.stack_name, ChangeSetName=change_set,
            WaiterConfig={"Delay": 2, "MaxAttempts": max(1, args.timeout // 2)})
    except WaiterError as e:
        desc = cf.describe_change_set(StackName=args.stack_name, ChangeSetName=change_set)
        reason = desc.get("StatusReason") or str(e)
        if "didn't contain changes" in reason or "No updates are to be performed" in reason:
            cf.delete_change_set(StackName=args.stack_name, ChangeSetName=change_set)
            say("no changes")
            return outputs(cf, args.stack_name)
        raise DeployError(f"change set {change_set} failed: {reason}") from e

    cf.execute_change_set(StackName=args.stack_name, ChangeSetName=change_set)
    waiter = "stack_create_complete" if kind == "CREATE" else "stack_update_complete"
    try:
        cf.get_waiter(waiter).wait(StackName=args.stack_name,
                                   WaiterConfig={"Delay": 2 if args.local else 10,
                                                 "MaxAttempts": max(1, args.timeout // (2 if args.local else 10))})
    except WaiterError as e:
        events = failure_events(cf, args.stack_name, started)
        raise DeployError(f"stack {args.stack_name} did not deploy: {e}\n" + "\n".join(events)) from e
    say(f"stack {args.stack_name} is {stack_status(cf, args.stack_name)['StackStatus']}")
    return outputs(cf, args.stack_name)


def outputs(cf, name: str) -> dict[str, str]:
    stack = stack_status(cf, name) or {}
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


def write_env(args: argparse.Namespace, out: dict[str, str], endpoint: str | None, region: str) -> None:
    missing = [k for k in ("LakeBucketName", "LakeUrl", "AlarmTopicArn") if k not in out]
    if missing:
        raise DeployError(f"the stack has no output(s) {', '.join(missing)}; is {TEMPLATE} the template it was deployed from?")
    params = parse_parameters(args)
    brokers = args.kafka_brokers or os.environ.get("KAFKA_BROKERS") or ("127.0.0.1:9092" if args.local else "")
    topic = args.kafka_topic or os.environ.get("KAFKA_TOPIC") or params.get("KafkaTopic", "metrics")
    env = {}
    if brokers:
        env["KAFKA_BROKERS"] = brokers
    env["KAFKA_TOPIC"] = topic
    if endpoint:
        env |= {"AWS_ENDPOINT_URL": endpoint}
    env |= {"AWS_REGION": region, "AWS_DEFAULT_REGION": region}
    if args.local:
        env |= {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_ALLOW_HTTP": "true"}
    env |= {
        "LAKE": out["LakeUrl"],
        "LAKE_BUCKET": out["LakeBucketName"],
        "SNS_TOPIC_ARN": out["AlarmTopicArn"],
        "DAMSELFLY_STACK": args.stack_name,
    }
    if "AlarmQueueUrl" in out:
        env["ALARM_QUEUE_URL"] = out["AlarmQueueUrl"]
    if "FailureQueueUrl" in out:
        env["FAILURE_QUEUE_URL"] = out["FailureQueueUrl"]
    if "FailureBucketName" in out:
        env["FAILURE_BUCKET"] = out["FailureBucketName"]
    if "AlarmGroup" in out:
        env["ALARM_GROUP"] = out["AlarmGroup"]
    lines = [f"# Written by infra/deploy{' --local' if args.local else ''}: the endpoints of stack {args.stack_name}. Use: . {args.env_file}"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    args.env_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.env_file.with_name(f"{args.env_file.name}.tmp.{os.getpid()}")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(args.env_file)
    say(f"wrote {args.env_file}")


def delete(args: argparse.Namespace, make) -> None:
    cf = make("cloudformation")
    stack = stack_status(cf, args.stack_name)
    if stack is None:
        say(f"stack {args.stack_name} does not exist")
        return
    out = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    say(f"deleting stack {args.stack_name}")
    cf.delete_stack(StackName=args.stack_name)
    try:
        cf.get_waiter("stack_delete_complete").wait(StackName=args.stack_name,
                                                    WaiterConfig={"Delay": 2, "MaxAttempts": max(1, args.timeout // 2)})
    except WaiterError as e:
        raise DeployError(f"stack {args.stack_name} was not deleted: {e}") from e
    bucket = out.get("LakeBucketName")
    if bucket and args.local:
        s3 = make("s3")
        try:
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    s3.delete_objects(Bucket=bucket, Delete={"Objects": keys})
            s3.delete_bucket(Bucket=bucket)
            say(f"deleted the lake bucket {bucket}")
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") != "NoSuchBucket":
                raise
    elif bucket:
        say(f"the lake bucket {bucket} is retained (DeletionPolicy: Retain); empty and delete it yourself if you mean to")
    say(f"stack {args.stack_name} deleted")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        session, make, endpoint = clients(args)
        args._session, args._endpoint = session, endpoint
        if args.delete:
            delete(args, make)
            return 0
        out = deploy(args, make)
        for k, v in sorted(out.items()):
            print(f"{k}={v}")
        if args.env_file:
            write_env(args, out, endpoint, session.region_name)
        return 0
    except DeployError as e:
        say(f"ERROR: {e}")
        return 1
    except (ClientError, BotoCoreError) as e:
        say(f"ERROR: {e}")
        if not args.local:
            say("check your AWS credentials (aws sts get-caller-identity) and region")
        else:
            say("is LocalStack up? run localstack/up")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
