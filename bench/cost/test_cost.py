"""Tests of bench/cost/cost.py.

Every expectation is worked out by hand from the published prices and the inputs written
here (the arithmetic is spelled out beside it), never taken from the script's own output.
Run: python -m pytest bench/cost -q
"""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import cost  # noqa: E402

MONTH_S = 730 * 3600  # 2,628,000
GIB = 2**30

# Published tiers, written out here rather than read from prices.json.
CW_TIERS = [
    {"up_to": 10_000, "price": 0.30},
    {"up_to": 250_000, "price": 0.10},
    {"up_to": 1_000_000, "price": 0.05},
    {"up_to": None, "price": 0.02},
]
AMP_TIERS = [  # per 10M samples
    {"up_to": 2_000_000_000, "price": 0.90},
    {"up_to": 252_000_000_000, "price": 0.35},
    {"up_to": None, "price": 0.16},
]
LAMBDA_TIERS = [
    {"up_to": 7_500_000_000, "price": 0.0000133334},
    {"up_to": 18_750_000_000, "price": 0.0000120001},
    {"up_to": None, "price": 0.0000106667},
]


def field(value):
    return {"value": value, "source": "test"}


def small_measured() -> dict:
    """A 1-VM, 10-series fleet with round numbers, so that every figure can be done by hand."""
    return {
        "fleet": {
            "vms": field(1),
            "interval_s": field(2),
            "samples_per_message": field(10),
            "message_bytes": field(1000),
        },
        "aggregate_lambda": {
            "memory_mb": field(512),
            "records_per_batch": field(100),
            "ms_per_batch": field(200),
            "objects_per_batch": field(2),
        },
        "alarm_lambda": {
            "memory_mb": field(128),
            "records_per_batch": field(100),
            "ms_per_batch": field(100),
        },
        "compaction": {
            "bytes_per_sample_raw": field(2.0),
            "rollup_bytes_ratio": field(0.1),
            "rollup_retention_days": field(60),
            "memory_mb": field(1024),
            "seconds_per_hour_of_fleet": field(3.6),
        },
        "retention_days": field(30),
        "api": {
            "queries_per_month": field(1000),
            "objects_read_per_query": field(5),
            "lambda_ms": field(100),
            "lambda_memory_mb": field(1024),
        },
        "model_assumptions": {
            "cloudwatch_agent_flush_s": field(60),
            "cloudwatch_max_datums_per_request": field(1000),
            "amp_bytes_per_sample": field(1.5),
            "query_series": field(10),
            "query_window_h": field(1),
            "msk_brokers": field(3),
            "msk_replication_factor": field(3),
            "msk_topic_retention_h": field(24),
            "msk_partitions": field(12),
            "msk_consumer_groups": field(2),
        },
    }


@pytest.fixture(scope="module")
def prices() -> dict:
    return cost.load_json(HERE / "prices.json")


@pytest.fixture(scope="module")
def measured() -> dict:
    return cost.load_json(HERE / "measured.json")


def line(result: dict, system: str, item: str) -> dict:
    (found,) = [x for x in result["systems"][system]["lines"] if x["item"] == item]
    return found


# --- tiered pricing: at, below and above every boundary ----------------------------------------


@pytest.mark.parametrize(
    "metrics, expected",
    [
        (0, 0.0),
        (1, 0.30),
        (9_999, 9_999 * 0.30),  # 2,999.70
        (10_000, 3_000.00),
        (10_001, 3_000.00 + 0.10),
        (249_999, 3_000 + 239_999 * 0.10),  # 26,999.90
        (250_000, 3_000 + 24_000.00),  # 27,000
        (250_001, 27_000 + 0.05),
        (999_999, 27_000 + 749_999 * 0.05),  # 64,499.95
        (1_000_000, 27_000 + 37_500.00),  # 64,500
        (1_000_001, 64_500 + 0.02),
        (2_000_000, 64_500 + 1_000_000 * 0.02),  # 84,500
    ],
)
def test_tiered_cost_cloudwatch_boundaries(metrics, expected):
    assert cost.tiered_cost(metrics, CW_TIERS) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(
    "samples, expected",
    [
        (2_000_000_000 - 10_000_000, 199 * 0.90),  # 179.10
        (2_000_000_000, 200 * 0.90),  # 180
        (2_000_000_000 + 10_000_000, 180 + 0.35),
        (252_000_000_000 - 10_000_000, 180 + 24_999 * 0.35),  # 8,929.65
        (252_000_000_000, 180 + 25_000 * 0.35),  # 8,930
        (252_000_000_000 + 10_000_000, 8_930 + 0.16),
    ],
)
def test_tiered_cost_per_unit_amp_boundaries(samples, expected):
    assert cost.tiered_cost(samples, AMP_TIERS, per=10_000_000) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(
    "gb_s, expected",
    [
        (7_500_000_000 - 1, 100_000.5 - 0.0000133334),
        (7_500_000_000, 100_000.5),  # 7.5e9 x 0.0000133334
        (7_500_000_000 + 1, 100_000.5 + 0.0000120001),
        (18_750_000_000 - 1, 100_000.5 + 135_001.125 - 0.0000120001),
        (18_750_000_000, 100_000.5 + 135_001.125),  # + 11.25e9 x 0.0000120001
        (18_750_000_000 + 1, 235_001.625 + 0.0000106667),
    ],
)
def test_tiered_cost_lambda_boundaries(gb_s, expected):
    assert cost.tiered_cost(gb_s, LAMBDA_TIERS) == pytest.approx(expected, abs=1e-7)


def test_tiered_cost_rejects_negative_quantity():
    with pytest.raises(ValueError):
        cost.tiered_cost(-1, CW_TIERS)


def test_prices_json_holds_the_published_tiers(prices):
    cw = prices["cloudwatch"]["custom_metrics"]
    assert cost.tiered_cost(1_000_000, cw["tiers"], cw["per"]) == pytest.approx(64_500)
    amp = prices["prometheus"]["ingestion"]
    assert cost.tiered_cost(252_000_000_000, amp["tiers"], amp["per"]) == pytest.approx(8_930)
    lam = prices["lambda"]["arm64_duration"]
    assert cost.tiered_cost(7_500_000_000, lam["tiers"], lam["per"]) == pytest.approx(100_000.5)
    assert prices["as_of"] == "2026-12-07"


# --- the S3 request formula ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "objects, put_class",
    [(0, 2), (1, 4), (3, 8), (5, 12)],  # 2 state PUTs + objects x (staged PUT + COPY)
)
def test_aggregate_s3_requests_per_batch(objects, put_class):
    assert cost.aggregate_s3_requests_per_batch(objects) == {
        "get": 1,
        "put_class": put_class,
        "delete": objects,
    }


def test_alarm_s3_requests_per_batch():
    assert cost.alarm_s3_requests_per_batch() == {"get": 1, "put_class": 1, "delete": 0}


def test_put_metric_data_calls():
    # 50 series every 2 s, flush 60 s: 1,500 values a flush -> 2 calls a minute per VM.
    fleet = cost.Fleet(vms=3, interval_s=2, series_per_vm=50, message_bytes=1)
    assert cost.cloudwatch_put_requests(fleet, 60, 1000) == pytest.approx(3 * 43_800 * 2)
    # Interval longer than the flush: one call per interval (50 values).
    slow = cost.Fleet(vms=3, interval_s=300, series_per_vm=50, message_bytes=1)
    assert cost.cloudwatch_put_requests(slow, 60, 1000) == pytest.approx(3 * MONTH_S / 300)


# --- a small fleet, priced by hand ---------------------------------------------------------------


def test_small_fleet_damselfly_by_hand(prices):
    r = cost.compute(small_measured(), prices)
    t1 = 0.0000133334  # all 4,206.25 GB-s fall in the first tier
    put, get = 0.005 / 1000, 0.0004 / 1000
    req = 0.20 / 1e6
    # 1 VM / 2 s -> 1,314,000 messages a month -> 13,140 batches of 100 (aggregate and alarm).
    batches = 1_314_000 / 100
    agg_gb_s = batches * 0.2 * 0.5  # 1,314
    alarm_gb_s = batches * 0.1 * 0.125  # 164.25
    comp_gb_s = 730 * 3.6 * 1.0  # 2,628
    api_gb_s = 1000 * 0.1 * 1.0  # 100
    lambda_usd = (agg_gb_s + alarm_gb_s + comp_gb_s + api_gb_s) * t1
    lambda_req_usd = (batches + batches + 730 + 1000) * req
    agg_s3 = batches * 6 * put + batches * 1 * get  # 2 objects -> 6 PUT-class, 1 GET
    alarm_s3 = batches * 1 * put + batches * 1 * get
    # 5 samples/s; raw 30 d x 2 B; rollups 0.1 x 2 B over 60 d.
    raw_bytes = 5 * 30 * 86400 * 2.0  # 25,920,000
    rollup_bytes = 0.1 * 2.0 * 5 * 60 * 86400  # 5,184,000
    storage_usd = (raw_bytes + rollup_bytes) / GIB * 0.023
    # Compaction: GET 2 objects per batch; 18 objects per table-hour -> 1 LIST each; 1 PUT each.
    comp_s3 = batches * 2 * get + (2 * 730 + 2 * 730) * put
    api_s3 = 1000 * 5 * get
    expected = lambda_usd + lambda_req_usd + agg_s3 + alarm_s3 + storage_usd + comp_s3 + api_s3
    assert r["systems"]["damselfly"]["total"] == pytest.approx(expected, rel=1e-12)
    assert line(r, "damselfly", "aggregate Lambda duration (arm64)")["quantity"] == pytest.approx(1_314)
    assert line(r, "damselfly", "aggregate S3 PUT/COPY/LIST")["quantity"] == pytest.approx(78_840)
    assert line(r, "damselfly", "compaction S3 PUT/COPY/LIST")["quantity"] == pytest.approx(2_920)
    # 1,314 GB-s for 13,140,000 samples = 100 GB-s per million samples.
    assert r["derived"]["aggregate_gb_s_per_million_samples"] == pytest.approx(100.0)


def test_small_fleet_cloudwatch_by_hand(prices):
    r = cost.compute(small_measured(), prices)
    assert line(r, "cloudwatch", "custom metrics")["usd"] == pytest.approx(10 * 0.30)
    # 10 series x 30 samples per 60 s flush = 300 values -> 1 call a minute = 43,800 calls.
    assert line(r, "cloudwatch", "PutMetricData")["usd"] == pytest.approx(43_800 * 0.01 / 1000)
    # 1,000 queries x 10 metrics.
    assert line(r, "cloudwatch", "GetMetricData (same queries)")["usd"] == pytest.approx(0.10)
    assert r["systems"]["cloudwatch"]["total"] == pytest.approx(3.0 + 0.438 + 0.10)


def test_small_fleet_amp_by_hand(prices):
    r = cost.compute(small_measured(), prices)
    ingest = 13_140_000 * 0.90 / 10_000_000  # 1.1826
    storage = 5 * 30 * 86400 * 1.5 / GIB * 0.03
    query = 1000 * 10 * 1800 * 0.10 / 1e9  # 10 series x 1 h at 2 s per query
    assert line(r, "amp", "samples ingested")["usd"] == pytest.approx(1.1826)
    assert r["systems"]["amp"]["total"] == pytest.approx(ingest + storage + query)


def test_small_fleet_msk_by_hand(prices):
    r = cost.compute(small_measured(), prices)
    gib_in = 1_314_000 * 1000 / GIB
    stored = 0.5 * 1000 * 86400 / GIB  # 0.5 messages/s x 1,000 B x 24 h
    serverless = 730 * 0.75 + 12 * 730 * 0.0015 + gib_in * 0.10 + 2 * gib_in * 0.05 + stored * 0.10
    provisioned = 3 * 730 * 0.204 + 3 * stored * 0.10
    assert r["msk"]["serverless"]["total"] == pytest.approx(serverless)
    assert r["msk"]["provisioned"]["total"] == pytest.approx(provisioned)


# --- whole-model properties ----------------------------------------------------------------------


@pytest.mark.parametrize("vms", [None, 7, 1_000_000])
def test_per_vm_times_vms_is_the_total(measured, prices, vms):
    r = cost.compute(measured, prices, vms=vms)
    n = r["fleet"]["vms"]
    groups = list(r["systems"].values()) + list(r["msk"].values())
    for g in groups:
        assert g["per_vm"] * n == pytest.approx(g["total"], rel=1e-12)
        assert g["total"] == pytest.approx(sum(x["usd"] for x in g["lines"]), rel=1e-12)


def test_interval_60s_lowers_damselfly_and_amp_not_the_cloudwatch_metric_charge(measured, prices):
    fast = cost.compute(measured, prices, interval_s=2)
    slow = cost.compute(measured, prices, interval_s=60)
    assert slow["systems"]["damselfly"]["total"] < fast["systems"]["damselfly"]["total"]
    assert slow["systems"]["amp"]["total"] < fast["systems"]["amp"]["total"]
    assert line(slow, "cloudwatch", "custom metrics")["usd"] == line(fast, "cloudwatch", "custom metrics")["usd"]
    # 20,000 VMs x 50 series = 1,000,000 metrics whatever the interval: $64,500 by the tiers.
    assert line(slow, "cloudwatch", "custom metrics")["usd"] == pytest.approx(64_500)


def test_ratios_are_totals_over_damselfly(measured, prices):
    r = cost.compute(measured, prices)
    d = r["systems"]["damselfly"]["total"]
    assert r["ratios"]["cloudwatch_over_damselfly"] == pytest.approx(r["systems"]["cloudwatch"]["total"] / d)
    assert r["ratios"]["amp_over_damselfly"] == pytest.approx(r["systems"]["amp"]["total"] / d)


def test_compaction_scales_with_the_fleet(prices):
    m = small_measured()
    one = cost.compute(m, prices)
    two = cost.compute(m, prices, vms=2)
    item = "compaction Lambda duration (arm64)"
    assert line(two, "damselfly", item)["quantity"] == pytest.approx(2 * line(one, "damselfly", item)["quantity"])


def test_inputs_are_not_modified(measured, prices):
    before = copy.deepcopy((measured, prices))
    cost.compute(measured, prices, vms=123, interval_s=7)
    assert (measured, prices) == before


def test_cli_json_and_markdown(capsys):
    assert cost.main(["--json", "--vms", "100", "--interval", "10"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["fleet"]["vms"] == 100 and out["fleet"]["interval_s"] == 10
    assert cost.main([]) == 0
    text = capsys.readouterr().out
    assert "| Damselfly (Lambda + S3) |" in text and "## Assumptions" in text and "2026-12-07" in text
