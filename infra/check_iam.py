# Fails when an IAM statement in a CloudFormation/SAM template allows `"Resource": "*"` for an action that can be scoped to an ARN.
"""Least-privilege check for infra/template.yaml.

  infra/check-iam [TEMPLATE ...]   (default infra/template.yaml)
  infra/check-iam --self-test      (the check against infra/testdata/: a bad template must fail as expected)

Every Allow statement of every identity policy (AWS::IAM::Role / Policy / ManagedPolicy inline
policies, AWS::Serverless::Function Policies statements) and of every resource policy is read,
both branches of each Fn::If included. A statement whose Resource is "*" (or NotResource is
used) passes only if each of its actions is one AWS offers no resource-level permissions for
(NO_RESOURCE_LEVEL below); wildcard actions ("*", "s3:*", "s3:Get*") with "*" fail. Managed
policies attached by name or ARN cannot be checked and fail too: write the statements inline.
"""

from __future__ import annotations

import sys
from pathlib import Path

from cfnlint.decode import decode

INFRA = Path(__file__).resolve().parent

# Actions that only accept "Resource": "*" (Service Authorization Reference: no resource types).
NO_RESOURCE_LEVEL = {
    "ec2:DescribeNetworkInterfaces",
    "ec2:DescribeSecurityGroups",
    "ec2:DescribeSubnets",
    "ec2:DescribeVpcs",
    "kafka:ListClusters",
    "kafka:ListClustersV2",
    "secretsmanager:ListSecrets",
    "s3:ListAllMyBuckets",
    "sts:GetCallerIdentity",
    "xray:PutTraceSegments",
    "xray:PutTelemetryRecords",
    "cloudwatch:PutMetricData",
    "logs:DescribeLogGroups",
}

POLICY_HOLDERS = {
    # type: property paths (lists of keys) to policy documents, "[]" meaning "each item of a list"
    "AWS::IAM::Role": [["Policies", "[]", "PolicyDocument"]],
    "AWS::IAM::Policy": [["PolicyDocument"]],
    "AWS::IAM::ManagedPolicy": [["PolicyDocument"]],
    "AWS::IAM::UserPolicy": [["PolicyDocument"]],
    "AWS::IAM::GroupPolicy": [["PolicyDocument"]],
    "AWS::IAM::RolePolicy": [["PolicyDocument"]],
    "AWS::S3::BucketPolicy": [["PolicyDocument"]],
    "AWS::SQS::QueuePolicy": [["PolicyDocument"]],
    "AWS::SNS::TopicPolicy": [["PolicyDocument"]],
}


def branches(value, path: str):
    """Yields (value, path) for each concrete alternative of a value, expanding Fn::If; drops AWS::NoValue."""
    if isinstance(value, dict) and len(value) == 1 and "Fn::If" in value:
        _, yes, no = value["Fn::If"]
        yield from branches(yes, f"{path}/Fn::If/1")
        yield from branches(no, f"{path}/Fn::If/2")
    elif value is None or value == {"Ref": "AWS::NoValue"}:
        return
    else:
        yield value, path


def as_list(value, path: str):
    """Yields (item, path) of a value that may be one item, a list, or Fn::If of either."""
    for v, p in branches(value, path):
        if isinstance(v, list):
            for i, item in enumerate(v):
                yield from branches(item, f"{p}/{i}")
        else:
            yield v, p


def is_star(resource) -> bool:
    """True for "*" written plainly, through !Sub "*", or !Join ["", ["*"]]."""
    if isinstance(resource, str):
        return resource.strip() == "*"
    if isinstance(resource, dict) and len(resource) == 1:
        (fn, arg), = resource.items()
        if fn == "Fn::Sub":
            text = arg[0] if isinstance(arg, list) else arg
            return isinstance(text, str) and text.strip() == "*"
        if fn == "Fn::Join" and isinstance(arg, list) and len(arg) == 2 and isinstance(arg[1], list):
            parts = arg[1]
            return all(isinstance(p, str) for p in parts) and "".join(parts).strip() == "*"
    return False


def check_statement(stmt, path: str) -> list[str]:
    if not isinstance(stmt, dict):
        return []
    if stmt.get("Effect") != "Allow":
        return []  # a Deny over "*" only narrows
    name = f"{path}" + (f" (Sid {stmt['Sid']})" if isinstance(stmt.get("Sid"), str) else "")
    if "NotResource" in stmt:
        return [f"{name}: NotResource allows everything but a list; name the resources instead"]
    resources = [r for r, _ in as_list(stmt.get("Resource"), path)]
    if not any(is_star(r) for r in resources):
        return []
    if "NotAction" in stmt:
        return [f"{name}: NotAction with Resource \"*\" allows almost everything"]
    actions = [a for a, _ in as_list(stmt.get("Action"), path)]
    bad = []
    for a in actions:
        if not isinstance(a, str):
            bad.append(str(a))
        elif "*" in a or a not in NO_RESOURCE_LEVEL:
            bad.append(a)
    if bad:
        return [
            f"{name}: Resource \"*\" for {', '.join(bad)}, which can be scoped to an ARN "
            "(name the ARN; only actions without resource-level permissions may keep \"*\", in a statement of their own)"
        ]
    return []


def check_document(doc, path: str) -> list[str]:
    findings = []
    for d, p in branches(doc, path):
        if not isinstance(d, dict):
            continue
        for stmt, sp in as_list(d.get("Statement"), f"{p}/Statement"):
            findings += check_statement(stmt, sp)
    return findings


def documents(props, keys: list[str], path: str):
    """Yields (document, path) found under `keys` ("[]" = each list item, Fn::If expanded)."""
    if not keys:
        yield props, path
        return
    key, rest = keys[0], keys[1:]
    if key == "[]":
        for item, p in as_list(props, path):
            yield from documents(item, rest, p)
        return
    for v, p in branches(props, path):
        if isinstance(v, dict) and key in v:
            yield from documents(v[key], rest, f"{p}/{key}")


def check_template(path: Path) -> list[str]:
    template, matches = decode(str(path))
    if matches or template is None:
        return [f"{path}: cannot parse: {'; '.join(str(m) for m in matches)}"]
    findings = []
    for name, res in (template.get("Resources") or {}).items():
        if not isinstance(res, dict):
            continue
        rtype, props = res.get("Type"), res.get("Properties") or {}
        base = f"Resources/{name}/Properties"
        for keys in POLICY_HOLDERS.get(rtype, []):
            for doc, p in documents(props, keys, base):
                findings += check_document(doc, p)
        if rtype == "AWS::IAM::Role":
            for arn, p in as_list(props.get("ManagedPolicyArns"), f"{base}/ManagedPolicyArns"):
                findings.append(f"{p}: managed policy {arn} cannot be checked here; write its statements inline")
        if rtype == "AWS::Serverless::Function":
            for pol, p in as_list(props.get("Policies"), f"{base}/Policies"):
                if isinstance(pol, dict) and "Statement" in pol:
                    findings += check_document(pol, p)
                elif isinstance(pol, str):
                    findings.append(f"{p}: managed policy {pol} cannot be checked here; write its statements inline")
                # SAM policy templates ({S3ReadPolicy: {BucketName: ...}}) are scoped by their parameters.
    return [f"{path}: {f}" for f in findings]


def self_test() -> int:
    """The bad fixture must produce exactly the expected findings, the good one none."""
    bad = INFRA / "testdata" / "bad-iam.yaml"
    good = INFRA / "testdata" / "good-iam.yaml"
    got = check_template(bad)
    expected = [
        "Resources/StarRole/Properties/Policies/0/PolicyDocument/Statement/0 (Sid ReadEverything): Resource \"*\" for s3:GetObject",
        "Resources/StarRole/Properties/Policies/0/PolicyDocument/Statement/1/Fn::If/1 (Sid HiddenInACondition): Resource \"*\" for sns:Publish",
        "Resources/StarRole/Properties/Policies/0/PolicyDocument/Statement/2 (Sid MixedWithDescribe): Resource \"*\" for ec2:CreateNetworkInterface",
        "Resources/StarRole/Properties/Policies/0/PolicyDocument/Statement/3 (Sid WildcardAction): Resource \"*\" for ec2:Describe*",
        "Resources/StarRole/Properties/Policies/0/PolicyDocument/Statement/4 (Sid StarInAList): Resource \"*\" for sqs:SendMessage",
        "Resources/StarRole/Properties/Policies/0/PolicyDocument/Statement/5 (Sid StarBySub): Resource \"*\" for logs:PutLogEvents",
        "Resources/StarRole/Properties/ManagedPolicyArns/0: managed policy arn:aws:iam::aws:policy/AmazonS3FullAccess cannot be checked",
        "Resources/StarFunction/Properties/Policies/0: managed policy AWSLambdaBasicExecutionRole cannot be checked",
        "Resources/StarFunction/Properties/Policies/1/Statement/0: Resource \"*\" for kafka:DescribeCluster",
        "Resources/StarPolicy/Properties/PolicyDocument/Statement/0 (Sid Everything): Resource \"*\" for *",
    ]
    failures = []
    for want in expected:
        hits = [g for g in got if want in g]
        if len(hits) != 1:
            failures.append(f"expected one finding containing {want!r}, got {len(hits)}")
    if len(got) != len(expected):
        failures.append(f"expected {len(expected)} findings, got {len(got)}:\n  " + "\n  ".join(got))
    clean = check_template(good)
    if clean:
        failures.append("the good fixture should pass, got:\n  " + "\n  ".join(clean))
    for f in failures:
        print(f"check-iam self-test: FAIL: {f}", file=sys.stderr)
    if not failures:
        print(f"check-iam self-test: ok ({len(expected)} findings in {bad.name}, none in {good.name})")
    return 1 if failures else 0


def main(argv: list[str]) -> int:
    if argv == ["--self-test"]:
        return self_test()
    if any(a.startswith("-") for a in argv):
        print(__doc__, file=sys.stderr)
        return 2
    paths = [Path(a) for a in argv] or [INFRA / "template.yaml"]
    findings = [f for p in paths for f in check_template(p)]
    for f in findings:
        print(f"check-iam: {f}", file=sys.stderr)
    if findings:
        print(f"check-iam: {len(findings)} statement(s) broader than they need to be", file=sys.stderr)
        return 1
    print(f"check-iam: ok ({', '.join(str(p) for p in paths)})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
