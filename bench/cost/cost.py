#!/usr/bin/env python3
"""Damselfly's cost model: dollars per VM per month, beside CloudWatch and Managed Prometheus.

What it is for
--------------
It turns Damselfly's measured figures (Lambda GB-seconds per batch on arm64, S3 requests per
batch, stored bytes per sample after compaction, the query API's requests) into dollars per VM
per month for a fleet (20,000 VMs at a 2 s interval by default). Beside that it prices the same
fleet in Amazon CloudWatch (custom metrics sent by the CloudWatch agent) and in Amazon Managed
Service for Prometheus (AMP), and prints the ratios. Kafka (Amazon MSK) is priced separately,
since all three would need the agents' data carried somewhere and Damselfly's Kafka is the
user's choice (provisioned brokers or MSK Serverless).

How to run
----------
    python bench/cost/cost.py                         # markdown report for measured.json's fleet
    python bench/cost/cost.py --vms 5000 --interval 10
    python bench/cost/cost.py --measured my.json --prices my-prices.json
    python bench/cost/cost.py --json                  # the same figures as JSON

Python 3.11+, standard library only. Inputs:
  * measured.json  the measured figures and stated assumptions, each {value, source}.
  * prices.json    us-east-1 list prices (dated), each with its unit and source page.
Every assumption the model makes is printed under "Assumptions" in the report.
Tests: python -m pytest bench/cost -q
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
HOURS_PER_MONTH = 730
SECONDS_PER_MONTH = HOURS_PER_MONTH * 3600
SECONDS_PER_DAY = 86400
GIB = 2**30
S3_LIST_KEYS_PER_PAGE = 1000  # ListObjectsV2 returns at most 1,000 keys per request


# ---------------------------------------------------------------------------------------------
# Inputs and pricing primitives
# ---------------------------------------------------------------------------------------------


def load_json(path: str | Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def val(section: dict, key: str) -> float:
    """The value of a {value, source} field."""
    return section[key]["value"]


def tiered_cost(quantity: float, tiers: list[dict], per: float = 1.0) -> float:
    """Cost of `quantity` units under cumulative tiers.

    `tiers` is [{"up_to": bound or None, "price": p}, ...] in increasing order; each tier's
    price is for `per` units and applies to the units between the previous bound and its own.
    """
    if quantity < 0:
        raise ValueError("quantity must be >= 0")
    cost = 0.0
    lower = 0.0
    for tier in tiers:
        upper = tier["up_to"]
        top = quantity if upper is None else min(quantity, upper)
        if top > lower:
            cost += (top - lower) * tier["price"] / per
        if upper is None or quantity <= upper:
            break
        lower = upper
    return cost


def flat_cost(quantity: float, price: dict) -> float:
    return quantity * price["value"] / price["per"]


def price_text(price: dict) -> str:
    """A price entry as '$0.005 / 1,000'."""
    per = price["per"]
    per_text = "" if per == 1 else f" / {per:,.0f}"
    return f"${price['value']:g}{per_text}"


def tier_text(price: dict, quantity: float) -> str:
    """A tiered price as its average rate for `quantity`."""
    per = price["per"]
    if quantity <= 0:
        return "tiered"
    avg = tiered_cost(quantity, price["tiers"], per) / quantity * per
    per_text = "" if per == 1 else f" / {per:,.0f}"
    return f"tiered, avg ${avg:.6g}{per_text}"


@dataclass
class Line:
    """One priced line of the report."""

    item: str
    quantity: float
    unit: str
    unit_price: str
    usd: float


@dataclass(frozen=True)
class Fleet:
    vms: int
    interval_s: float
    series_per_vm: int  # samples per message = (metric, device) series per VM
    message_bytes: float

    @property
    def messages_per_month(self) -> float:
        return self.vms * SECONDS_PER_MONTH / self.interval_s

    @property
    def samples_per_second(self) -> float:
        return self.vms * self.series_per_vm / self.interval_s

    @property
    def samples_per_month(self) -> float:
        return self.samples_per_second * SECONDS_PER_MONTH


def fleet_from(measured: dict, vms: int | None = None, interval_s: float | None = None) -> Fleet:
    f = measured["fleet"]
    return Fleet(
        vms=int(vms if vms is not None else val(f, "vms")),
        interval_s=float(interval_s if interval_s is not None else val(f, "interval_s")),
        series_per_vm=int(val(f, "samples_per_message")),
        message_bytes=float(val(f, "message_bytes")),
    )


def samples_retained(fleet: Fleet, days: float) -> float:
    """Samples present at steady state for a retention of `days`."""
    return fleet.samples_per_second * days * SECONDS_PER_DAY


# ---------------------------------------------------------------------------------------------
# Damselfly
# ---------------------------------------------------------------------------------------------


def lambda_gb_seconds(invocations: float, ms: float, memory_mb: float) -> float:
    return invocations * (ms / 1000.0) * (memory_mb / 1024.0)


def batches_per_month(fleet: Fleet, records_per_batch: float) -> float:
    """Lambda invocations of a Kafka consumer function: one record per VM per interval."""
    return fleet.messages_per_month / records_per_batch


def aggregate_s3_requests_per_batch(objects_per_batch: int) -> dict:
    """S3 requests of one aggregate batch, by price class.

    1 state GET (GET class)
    + per object: a staged PUT and a COPY to its final key (PUT class), a DELETE of the
      staged copy (free)
    + 2 conditional state PUTs (PUT class).
    """
    return {
        "get": 1,
        "put_class": 2 * objects_per_batch + 2,
        "delete": objects_per_batch,
    }


def alarm_s3_requests_per_batch() -> dict:
    """S3 requests of one alarm batch: 1 state GET + 1 state PUT."""
    return {"get": 1, "put_class": 1, "delete": 0}


def compaction_scale(measured: dict, fleet: Fleet) -> float:
    """Compaction work scales with samples/s relative to the fleet its figure was measured on."""
    ref = fleet_from(measured)
    return fleet.samples_per_second / ref.samples_per_second


def lambda_usage(measured: dict, fleet: Fleet) -> dict:
    """Invocations and GB-seconds per month of each Damselfly function."""
    agg, alarm, comp, api = (
        measured["aggregate_lambda"],
        measured["alarm_lambda"],
        measured["compaction"],
        measured["api"],
    )
    agg_batches = batches_per_month(fleet, val(agg, "records_per_batch"))
    alarm_batches = batches_per_month(fleet, val(alarm, "records_per_batch"))
    comp_seconds = val(comp, "seconds_per_hour_of_fleet") * compaction_scale(measured, fleet)
    queries = val(api, "queries_per_month")
    return {
        "aggregate": {
            "invocations": agg_batches,
            "gb_s": lambda_gb_seconds(agg_batches, val(agg, "ms_per_batch"), val(agg, "memory_mb")),
        },
        "alarm": {
            "invocations": alarm_batches,
            "gb_s": lambda_gb_seconds(
                alarm_batches, val(alarm, "ms_per_batch"), val(alarm, "memory_mb")
            ),
        },
        "compaction": {
            "invocations": HOURS_PER_MONTH,
            "gb_s": lambda_gb_seconds(HOURS_PER_MONTH, comp_seconds * 1000, val(comp, "memory_mb")),
        },
        "api": {
            "invocations": queries,
            "gb_s": lambda_gb_seconds(queries, val(api, "lambda_ms"), val(api, "lambda_memory_mb")),
        },
    }


def lambda_duration_rate(total_gb_s: float, prices: dict) -> float:
    """Average $/GB-s of all arm64 functions together (the tiers apply to their sum)."""
    tiers = prices["lambda"]["arm64_duration"]["tiers"]
    if total_gb_s <= 0:
        return tiers[0]["price"]
    return tiered_cost(total_gb_s, tiers) / total_gb_s


def lambda_lines(name: str, usage: dict, rate: float, prices: dict) -> list[Line]:
    req = prices["lambda"]["requests"]
    return [
        Line(f"{name} Lambda duration (arm64)", usage["gb_s"], "GB-s", f"${rate:.10f}",
             usage["gb_s"] * rate),
        Line(f"{name} Lambda requests", usage["invocations"], "requests", price_text(req),
             flat_cost(usage["invocations"], req)),
    ]


def s3_request_lines(name: str, get: float, put_class: float, prices: dict) -> list[Line]:
    lines = []
    if put_class:
        p = prices["s3"]["put_copy_post_list"]
        lines.append(Line(f"{name} S3 PUT/COPY/LIST", put_class, "requests", price_text(p),
                          flat_cost(put_class, p)))
    if get:
        g = prices["s3"]["get_select"]
        lines.append(Line(f"{name} S3 GET", get, "requests", price_text(g), flat_cost(get, g)))
    return lines


def aggregate_lines(measured: dict, fleet: Fleet, usage: dict, rate: float, prices: dict) -> list[Line]:
    agg = measured["aggregate_lambda"]
    batches = usage["aggregate"]["invocations"]
    req = aggregate_s3_requests_per_batch(int(val(agg, "objects_per_batch")))
    return lambda_lines("aggregate", usage["aggregate"], rate, prices) + s3_request_lines(
        "aggregate", batches * req["get"], batches * req["put_class"], prices
    )


def alarm_lines(measured: dict, fleet: Fleet, usage: dict, rate: float, prices: dict) -> list[Line]:
    batches = usage["alarm"]["invocations"]
    req = alarm_s3_requests_per_batch()
    return lambda_lines("alarm", usage["alarm"], rate, prices) + s3_request_lines(
        "alarm", batches * req["get"], batches * req["put_class"], prices
    )


def storage_bytes(measured: dict, fleet: Fleet) -> dict:
    """Bytes in S3 at steady state: raw for its retention, rollups for theirs."""
    comp = measured["compaction"]
    raw_bps = val(comp, "bytes_per_sample_raw")
    raw = raw_bps * samples_retained(fleet, val(measured, "retention_days"))
    rollup = (
        val(comp, "rollup_bytes_ratio")
        * raw_bps
        * samples_retained(fleet, val(comp, "rollup_retention_days"))
    )
    return {"raw": raw, "rollup": rollup}


def storage_lines(measured: dict, fleet: Fleet, prices: dict) -> list[Line]:
    st = prices["s3"]["standard_storage"]
    b = storage_bytes(measured, fleet)
    total_gib = (b["raw"] + b["rollup"]) / GIB
    rate = tiered_cost(total_gib, st["tiers"]) / total_gib if total_gib else st["tiers"][0]["price"]
    return [
        Line("S3 Standard storage, raw", b["raw"] / GIB, "GB-month", f"${rate:.4f}",
             b["raw"] / GIB * rate),
        Line("S3 Standard storage, rollups", b["rollup"] / GIB, "GB-month", f"${rate:.4f}",
             b["rollup"] / GIB * rate),
    ]


def compaction_requests(measured: dict, fleet: Fleet, usage: dict) -> dict:
    """S3 requests of hourly compaction: GET every batch object once, LIST each table's hour,
    PUT one object per (table, hour); the DELETEs of merged objects are free."""
    tables = int(val(measured["aggregate_lambda"], "objects_per_batch"))
    objects = usage["aggregate"]["invocations"] * tables
    per_table_hour = objects / tables / HOURS_PER_MONTH if tables else 0
    lists = tables * HOURS_PER_MONTH * math.ceil(per_table_hour / S3_LIST_KEYS_PER_PAGE)
    puts = tables * HOURS_PER_MONTH
    return {"get": objects, "put_class": puts + lists, "delete": objects}


def compaction_lines(measured: dict, fleet: Fleet, usage: dict, rate: float, prices: dict) -> list[Line]:
    req = compaction_requests(measured, fleet, usage)
    return lambda_lines("compaction", usage["compaction"], rate, prices) + s3_request_lines(
        "compaction", req["get"], req["put_class"], prices
    )


def api_lines(measured: dict, usage: dict, rate: float, prices: dict) -> list[Line]:
    api = measured["api"]
    gets = val(api, "queries_per_month") * val(api, "objects_read_per_query")
    return lambda_lines("API", usage["api"], rate, prices) + s3_request_lines("API", gets, 0, prices)


def damselfly_lines(measured: dict, prices: dict, fleet: Fleet) -> list[Line]:
    usage = lambda_usage(measured, fleet)
    rate = lambda_duration_rate(sum(u["gb_s"] for u in usage.values()), prices)
    return (
        aggregate_lines(measured, fleet, usage, rate, prices)
        + alarm_lines(measured, fleet, usage, rate, prices)
        + storage_lines(measured, fleet, prices)
        + compaction_lines(measured, fleet, usage, rate, prices)
        + api_lines(measured, usage, rate, prices)
    )


# ---------------------------------------------------------------------------------------------
# CloudWatch (custom metrics from the CloudWatch agent)
# ---------------------------------------------------------------------------------------------


def cloudwatch_metric_count(fleet: Fleet) -> int:
    """One custom metric per (VM, metric name, device) series."""
    return fleet.vms * fleet.series_per_vm


def cloudwatch_put_requests(fleet: Fleet, flush_s: float, max_datums: int) -> float:
    """PutMetricData calls per month: each VM's agent sends what it buffered every flush
    (or every interval, if longer), at most `max_datums` values per call."""
    period = max(flush_s, fleet.interval_s)
    datums = fleet.series_per_vm * period / fleet.interval_s
    calls_per_period = math.ceil(datums / max_datums)
    return fleet.vms * (SECONDS_PER_MONTH / period) * calls_per_period


def cloudwatch_metric_lines(fleet: Fleet, prices: dict) -> list[Line]:
    p = prices["cloudwatch"]["custom_metrics"]
    n = cloudwatch_metric_count(fleet)
    return [Line("custom metrics", n, "metric-months", tier_text(p, n),
                 tiered_cost(n, p["tiers"], p["per"]))]


def cloudwatch_put_lines(measured: dict, fleet: Fleet, prices: dict) -> list[Line]:
    a = measured["model_assumptions"]
    p = prices["cloudwatch"]["put_metric_data"]
    n = cloudwatch_put_requests(
        fleet, val(a, "cloudwatch_agent_flush_s"), int(val(a, "cloudwatch_max_datums_per_request"))
    )
    return [Line("PutMetricData", n, "requests", price_text(p), flat_cost(n, p))]


def cloudwatch_query_lines(measured: dict, prices: dict) -> list[Line]:
    p = prices["cloudwatch"]["get_metric_data"]
    n = val(measured["api"], "queries_per_month") * val(measured["model_assumptions"], "query_series")
    return [Line("GetMetricData (same queries)", n, "metrics requested", price_text(p),
                 flat_cost(n, p))]


def cloudwatch_lines(measured: dict, prices: dict, fleet: Fleet) -> list[Line]:
    return (
        cloudwatch_metric_lines(fleet, prices)
        + cloudwatch_put_lines(measured, fleet, prices)
        + cloudwatch_query_lines(measured, prices)
    )


# ---------------------------------------------------------------------------------------------
# Amazon Managed Service for Prometheus
# ---------------------------------------------------------------------------------------------


def amp_ingestion_lines(fleet: Fleet, prices: dict) -> list[Line]:
    p = prices["prometheus"]["ingestion"]
    n = fleet.samples_per_month
    return [Line("samples ingested", n, "samples", tier_text(p, n),
                 tiered_cost(n, p["tiers"], p["per"]))]


def amp_storage_lines(measured: dict, fleet: Fleet, prices: dict) -> list[Line]:
    p = prices["prometheus"]["storage"]
    bps = val(measured["model_assumptions"], "amp_bytes_per_sample")
    gib = bps * samples_retained(fleet, val(measured, "retention_days")) / GIB
    return [Line("storage", gib, "GB-month", price_text(p), flat_cost(gib, p))]


def amp_query_samples(measured: dict, fleet: Fleet) -> float:
    a = measured["model_assumptions"]
    per_query = val(a, "query_series") * val(a, "query_window_h") * 3600 / fleet.interval_s
    return val(measured["api"], "queries_per_month") * per_query


def amp_query_lines(measured: dict, fleet: Fleet, prices: dict) -> list[Line]:
    p = prices["prometheus"]["query_samples"]
    n = amp_query_samples(measured, fleet)
    return [Line("query samples processed (same queries)", n, "samples", price_text(p),
                 flat_cost(n, p))]


def amp_lines(measured: dict, prices: dict, fleet: Fleet) -> list[Line]:
    return (
        amp_ingestion_lines(fleet, prices)
        + amp_storage_lines(measured, fleet, prices)
        + amp_query_lines(measured, fleet, prices)
    )


# ---------------------------------------------------------------------------------------------
# Kafka (MSK), shown separately
# ---------------------------------------------------------------------------------------------


def kafka_bytes_in_per_month(fleet: Fleet) -> float:
    return fleet.messages_per_month * fleet.message_bytes


def kafka_bytes_retained(fleet: Fleet, retention_h: float) -> float:
    """One copy of the topic's retained bytes."""
    return fleet.vms / fleet.interval_s * fleet.message_bytes * retention_h * 3600


def msk_provisioned_lines(measured: dict, prices: dict, fleet: Fleet) -> list[Line]:
    a, m = measured["model_assumptions"], prices["msk"]
    broker_hours = val(a, "msk_brokers") * HOURS_PER_MONTH
    gib = (kafka_bytes_retained(fleet, val(a, "msk_topic_retention_h"))
           * val(a, "msk_replication_factor") / GIB)
    return [
        Line("kafka.m7g.large broker-hours", broker_hours, "broker-hours",
             price_text(m["kafka_m7g_large_broker_hour"]),
             flat_cost(broker_hours, m["kafka_m7g_large_broker_hour"])),
        Line("broker storage (retention x replication)", gib, "GB-month",
             price_text(m["provisioned_storage"]), flat_cost(gib, m["provisioned_storage"])),
    ]


def msk_serverless_lines(measured: dict, prices: dict, fleet: Fleet) -> list[Line]:
    a, m = measured["model_assumptions"], prices["msk"]
    partition_hours = val(a, "msk_partitions") * HOURS_PER_MONTH
    gib_in = kafka_bytes_in_per_month(fleet) / GIB
    gib_out = gib_in * val(a, "msk_consumer_groups")
    gib_stored = kafka_bytes_retained(fleet, val(a, "msk_topic_retention_h")) / GIB
    return [
        Line("cluster-hours", HOURS_PER_MONTH, "cluster-hours",
             price_text(m["serverless_cluster_hour"]),
             flat_cost(HOURS_PER_MONTH, m["serverless_cluster_hour"])),
        Line("partition-hours", partition_hours, "partition-hours",
             price_text(m["serverless_partition_hour"]),
             flat_cost(partition_hours, m["serverless_partition_hour"])),
        Line("data in", gib_in, "GB", price_text(m["serverless_data_in"]),
             flat_cost(gib_in, m["serverless_data_in"])),
        Line("data out (consumer groups)", gib_out, "GB", price_text(m["serverless_data_out"]),
             flat_cost(gib_out, m["serverless_data_out"])),
        Line("storage (topic retention)", gib_stored, "GB-month",
             price_text(m["serverless_storage"]), flat_cost(gib_stored, m["serverless_storage"])),
    ]


# ---------------------------------------------------------------------------------------------
# The whole model
# ---------------------------------------------------------------------------------------------


def system(lines: list[Line], vms: int) -> dict:
    total = sum(line.usd for line in lines)
    return {"lines": [asdict(line) for line in lines], "total": total, "per_vm": total / vms}


def derived_figures(measured: dict, fleet: Fleet) -> dict:
    """The measured figures the issue names, as the model uses them."""
    usage = lambda_usage(measured, fleet)
    agg = measured["aggregate_lambda"]
    agg_req = aggregate_s3_requests_per_batch(int(val(agg, "objects_per_batch")))
    alarm_req = alarm_s3_requests_per_batch()
    comp_req = compaction_requests(measured, fleet, usage)
    put_month = (usage["aggregate"]["invocations"] * agg_req["put_class"]
                 + usage["alarm"]["invocations"] * alarm_req["put_class"]
                 + comp_req["put_class"])
    return {
        "samples_per_month": fleet.samples_per_month,
        "messages_per_month": fleet.messages_per_month,
        "aggregate_gb_s_per_million_samples": usage["aggregate"]["gb_s"] / fleet.samples_per_month * 1e6,
        "all_lambda_gb_s_per_month": sum(u["gb_s"] for u in usage.values()),
        "s3_put_class_per_hour": put_month / HOURS_PER_MONTH,
        "aggregate_s3_requests_per_batch": agg_req,
        "raw_bytes_per_sample": val(measured["compaction"], "bytes_per_sample_raw"),
        "api_lambda_requests_per_month": usage["api"]["invocations"],
        "api_s3_gets_per_month": val(measured["api"], "queries_per_month")
        * val(measured["api"], "objects_read_per_query"),
        "kafka_mib_per_second_in": fleet.vms / fleet.interval_s * fleet.message_bytes / 2**20,
    }


def assumptions(measured: dict, prices: dict, fleet: Fleet) -> list[str]:
    """Every assumption of the model, in words, with the values used."""
    a = measured["model_assumptions"]
    c = measured["compaction"]
    return [
        f"A month is {HOURS_PER_MONTH} hours ({SECONDS_PER_MONTH:,} s); GB means GiB (2^30 bytes), as AWS bills storage and data.",
        f"List prices, {prices['region']}, as of {prices['as_of']}; no free tier, Savings Plans or negotiated discounts.",
        f"Each VM sends one Kafka message per interval carrying {fleet.series_per_vm} samples, one per (metric, device) series; "
        f"the same {fleet.series_per_vm} series per VM are what CloudWatch counts as custom metrics and AMP as series.",
        "Lambda runs on arm64; its duration is assumed equal to the duration measured on x86 (the benchmarks ran on x86).",
        "The arm64 duration tiers apply to the sum of all Damselfly functions' GB-seconds; each function's line uses that sum's average rate.",
        f"Batch sizes (records per invocation) stay as measured when --vms/--interval change; at {fleet.vms:,} VMs every "
        f"{fleet.interval_s:g} s the topic carries {fleet.vms / fleet.interval_s:,.0f} messages/s.",
        "Aggregate S3 requests per batch: 1 state GET + per table written a staged PUT, a COPY and a (free) DELETE + 2 conditional state PUTs; "
        "alarm: 1 state GET + 1 state PUT. COPY and LIST are billed as PUTs.",
        f"Raw storage at steady state: {val(c, 'bytes_per_sample_raw')} bytes/sample (after `damselfly compact`) x the samples of "
        f"{val(measured, 'retention_days'):g} days. Rollups: {val(c, 'rollup_bytes_ratio'):g} x the raw bytes/sample, kept "
        f"{val(c, 'rollup_retention_days'):g} days (rollup_1h/1d taken as inside that ratio).",
        "Batch files wait at most about 2 hours (the hour plus compaction's 1 h grace) before compaction replaces them; "
        "their extra storage (under 0.3 % of 30 days of raw) is left out.",
        f"Compaction runs hourly as one Lambda invocation ({val(c, 'memory_mb'):g} MB, {val(c, 'seconds_per_hour_of_fleet'):g} s per hour "
        "for the measured fleet, scaled with samples/s); it GETs every batch object once, LISTs each table's hour "
        f"(1 request per {S3_LIST_KEYS_PER_PAGE:,} keys) and PUTs one object per (table, hour); tables = objects per batch.",
        "The query API is a Lambda function URL (no API Gateway charge); its S3 GETs are counted, its bytes read are free (same Region).",
        "Not counted for Damselfly: SNS for alarms, the DLQ, EventBridge's schedule, CloudWatch Logs of the functions, "
        "and the Kafka event source mapping (no charge in on-demand mode).",
        f"CloudWatch: the CloudWatch agent on each VM sends its buffer every {val(a, 'cloudwatch_agent_flush_s'):g} s (or every interval, "
        f"if longer), up to {val(a, 'cloudwatch_max_datums_per_request'):g} values per PutMetricData call, one value per sample; "
        "a VM's calls cannot be batched with another VM's. Metrics sent every 2 s are high-resolution; they are assumed "
        "to cost the same per metric-month as standard resolution.",
        f"AMP: stored at {val(a, 'amp_bytes_per_sample'):g} bytes/sample (Prometheus's published figure) and assumed kept for the same "
        f"{val(measured, 'retention_days'):g} days as Damselfly's raw table (AMP's default retention is 150 days); no charge for data in.",
        f"Queries: the same {val(measured['api'], 'queries_per_month'):,.0f} queries a month hit each system; for CloudWatch and AMP a query "
        f"reads {val(a, 'query_series'):g} series (one VM) over {val(a, 'query_window_h'):g} h.",
        "Not counted for CloudWatch or AMP: alarms/alerting rules (Damselfly's alarm function is counted), the agents' "
        "own compute on the VMs (as for Damselfly's agent), and data transfer (same Region).",
        f"Kafka is priced apart from all three. Provisioned: {val(a, 'msk_brokers'):g} x kafka.m7g.large and broker storage for "
        f"{val(a, 'msk_topic_retention_h'):g} h of the topic x replication factor {val(a, 'msk_replication_factor'):g}, no headroom; "
        "the brokers' capacity for this rate is not checked here, and cross-AZ client traffic is not counted.",
        f"MSK Serverless: {val(a, 'msk_partitions'):g} partitions, each message read by {val(a, 'msk_consumer_groups'):g} consumer groups "
        f"(aggregate and alarm), storage = one copy of {val(a, 'msk_topic_retention_h'):g} h of the topic, message bytes as on the wire.",
    ]


def price_sources(prices: dict) -> list[dict]:
    out = []
    for service, entries in prices.items():
        if not isinstance(entries, dict):
            continue
        for name, e in entries.items():
            if isinstance(e, dict) and "source" in e:
                out.append({"price": f"{service}.{name}", "unit": e["unit"], "source": e["source"],
                            "verified": e.get("verified", False),
                            "checked_against": e.get("checked_against", ""),
                            "note": e.get("evidence") or e.get("reason", "")})
    return out


def compute(measured: dict, prices: dict, vms: int | None = None, interval_s: float | None = None) -> dict:
    fleet = fleet_from(measured, vms, interval_s)
    systems = {
        "damselfly": system(damselfly_lines(measured, prices, fleet), fleet.vms),
        "cloudwatch": system(cloudwatch_lines(measured, prices, fleet), fleet.vms),
        "amp": system(amp_lines(measured, prices, fleet), fleet.vms),
    }
    d = systems["damselfly"]["total"]
    return {
        "fleet": asdict(fleet),
        "derived": derived_figures(measured, fleet),
        "systems": systems,
        "ratios": {
            "cloudwatch_over_damselfly": systems["cloudwatch"]["total"] / d,
            "amp_over_damselfly": systems["amp"]["total"] / d,
        },
        "msk": {
            "provisioned": system(msk_provisioned_lines(measured, prices, fleet), fleet.vms),
            "serverless": system(msk_serverless_lines(measured, prices, fleet), fleet.vms),
        },
        "assumptions": assumptions(measured, prices, fleet),
        "prices": {"as_of": prices["as_of"], "region": prices["region"], "note": prices["note"],
                   "entries": price_sources(prices)},
    }


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def fmt_qty(q: float) -> str:
    if q >= 1000 or q == int(q):
        return f"{q:,.0f}"
    return f"{q:,.2f}"


def fmt_usd(x: float) -> str:
    return f"${x:,.2f}"


def lines_table(title: str, sys_: dict, vms: int) -> list[str]:
    out = [f"**{title}**", "", "| Line item | Quantity | Unit | Unit price | $/month |",
           "|---|---:|---|---|---:|"]
    for line in sys_["lines"]:
        out.append(f"| {line['item']} | {fmt_qty(line['quantity'])} | {line['unit']} | "
                   f"{line['unit_price']} | {fmt_usd(line['usd'])} |")
    out.append(f"| **total** | | | | **{fmt_usd(sys_['total'])}** |")
    out.append(f"| **per VM** ({vms:,} VMs) | | | | **${sys_['per_vm']:.4f}** |")
    return out + [""]


def render_markdown(r: dict) -> str:
    f, s, d = r["fleet"], r["systems"], r["derived"]
    vms = f["vms"]
    out = [
        f"# Cost per VM-month: {vms:,} VMs, one sample per series every {f['interval_s']:g} s",
        "",
        f"Prices: {r['prices']['region']} list prices as of {r['prices']['as_of']}. "
        f"{d['samples_per_month']:,.0f} samples/month ({f['series_per_vm']} series per VM).",
        "",
        "## Line items",
        "",
    ]
    out += lines_table("Damselfly", s["damselfly"], vms)
    out += lines_table("CloudWatch", s["cloudwatch"], vms)
    out += lines_table("Amazon Managed Service for Prometheus", s["amp"], vms)
    out += [
        "## Totals",
        "",
        "| System | $/month | $/VM-month | x Damselfly |",
        "|---|---:|---:|---:|",
        f"| Damselfly (Lambda + S3) | {fmt_usd(s['damselfly']['total'])} | ${s['damselfly']['per_vm']:.4f} | 1.0 |",
        f"| CloudWatch (agent custom metrics) | {fmt_usd(s['cloudwatch']['total'])} | ${s['cloudwatch']['per_vm']:.4f} | "
        f"{r['ratios']['cloudwatch_over_damselfly']:,.1f} |",
        f"| Amazon Managed Service for Prometheus | {fmt_usd(s['amp']['total'])} | ${s['amp']['per_vm']:.4f} | "
        f"{r['ratios']['amp_over_damselfly']:,.1f} |",
        "",
        "Kafka is not in these figures; see the MSK section.",
        "",
        "## The measured figures as used",
        "",
        "| Figure | Value |",
        "|---|---:|",
        f"| aggregate Lambda GB-s per million samples (arm64) | {d['aggregate_gb_s_per_million_samples']:.4f} |",
        f"| all Damselfly Lambda GB-s per month | {d['all_lambda_gb_s_per_month']:,.0f} |",
        f"| S3 PUT-class requests per hour (aggregate + alarm + compaction) | {d['s3_put_class_per_hour']:,.0f} |",
        f"| aggregate S3 requests per batch (GET / PUT-class / free DELETE) | "
        f"{d['aggregate_s3_requests_per_batch']['get']} / {d['aggregate_s3_requests_per_batch']['put_class']} / "
        f"{d['aggregate_s3_requests_per_batch']['delete']} |",
        f"| stored bytes per sample after compaction (raw) | {d['raw_bytes_per_sample']} |",
        f"| API Lambda requests / S3 GETs per month | {d['api_lambda_requests_per_month']:,.0f} / {d['api_s3_gets_per_month']:,.0f} |",
        f"| Kafka intake (MiB/s) | {d['kafka_mib_per_second_in']:.2f} |",
        "",
        "## Kafka (Amazon MSK), separately",
        "",
    ]
    out += lines_table("MSK provisioned", r["msk"]["provisioned"], vms)
    out += lines_table("MSK Serverless", r["msk"]["serverless"], vms)
    out += ["## Assumptions", ""] + [f"- {a}" for a in r["assumptions"]] + [""]
    out += [f"## Price list ({r['prices']['region']}, as of {r['prices']['as_of']})", "",
            r["prices"]["note"], "", "| Price | Unit | Source | Checked against |", "|---|---|---|---|"]
    for e in r["prices"]["entries"]:
        checked = e["checked_against"] if e["verified"] else f"UNVERIFIED: {e['note']}"
        out.append(f"| {e['price']} | {e['unit']} | {e['source']} | {checked} |")
    return "\n".join(out) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--measured", default=str(HERE / "measured.json"), help="measured inputs (JSON)")
    ap.add_argument("--prices", default=str(HERE / "prices.json"), help="price list (JSON)")
    ap.add_argument("--vms", type=int, help="fleet size (default: measured.json's)")
    ap.add_argument("--interval", type=float, help="seconds between samples (default: measured.json's)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    if args.vms is not None and args.vms <= 0:
        ap.error("--vms must be positive")
    if args.interval is not None and args.interval <= 0:
        ap.error("--interval must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = compute(load_json(args.measured), load_json(args.prices), args.vms, args.interval)
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
