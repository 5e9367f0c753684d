//! MSK IAM tokens checked against botocore's SigV4 query signer, which AWS's own Python signer for MSK uses.
//!
//! Needs `DAMSELFLY_PYTHON`: a Python with `botocore` (tests/run's tools venv has it via boto3).

#![cfg(feature = "msk-iam")]

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

use aws_credential_types::Credentials;
use base64::Engine as _;
use damselfly_kafka::msk_iam::sign;

/// What `aws-msk-iam-sasl-signer-python` does, at a fixed time: the presigned connect URL.
const BOTOCORE: &str = r#"
import sys, datetime
from unittest import mock
from botocore.auth import SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
region, key, secret, token, epoch = sys.argv[1:6]
request = AWSRequest(method="GET", url=f"https://kafka.{region}.amazonaws.com/?Action=kafka-cluster%3AConnect")
when = datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc).replace(tzinfo=None)
with mock.patch("botocore.auth.get_current_datetime", return_value=when):
    SigV4QueryAuth(Credentials(key, secret, token or None), "kafka-cluster", region, expires=900).add_auth(request)
print(request.url)
"#;

fn query(url: &str) -> BTreeMap<String, String> {
    url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .into_owned()
        .filter(|(k, _)| k != "User-Agent")
        .collect()
}

#[test]
#[ignore = "needs DAMSELFLY_PYTHON with botocore: run tests/run"]
fn tokens_match_botocores_presigned_url() {
    let python = std::env::var("DAMSELFLY_PYTHON").expect("DAMSELFLY_PYTHON");
    for (region, token, epoch) in [
        ("us-east-1", "", 1_765_000_000u64),
        (
            "ap-northeast-2",
            "IQoJb3JpZ2luX2VjE/+session=",
            1_780_123_457,
        ),
    ] {
        let creds = Credentials::new(
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            (!token.is_empty()).then(|| token.to_owned()),
            None,
            "test",
        );
        let out = Command::new(&python)
            .args(["-c", BOTOCORE, region])
            .args([
                "AKIAIOSFODNN7EXAMPLE",
                "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                token,
                &epoch.to_string(),
            ])
            .output()
            .expect("run python");
        assert!(
            out.status.success(),
            "botocore: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let theirs = String::from_utf8(out.stdout).unwrap();
        let (ours, expires_ms) =
            sign(region, &creds, UNIX_EPOCH + Duration::from_secs(epoch)).unwrap();
        let ours = String::from_utf8(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(ours)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(query(&ours), query(theirs.trim()), "{region}");
        assert!(query(&ours).contains_key("X-Amz-Signature"));
        assert_eq!(expires_ms, (epoch as i64 + 900) * 1000);
    }
}
