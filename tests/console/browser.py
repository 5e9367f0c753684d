"""Drives headless Chromium (Playwright) over the console's pages for tests/console.rs and the benchmark: DOM data, errors, screenshots, load times."""

import argparse
import json
import re
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# Everything the tests read from a page, in one pass over its DOM.
EXTRACT = """() => {
  // Links as the path and query they lead to (the console's hrefs are relative to the page).
  const target = a => { const u = new URL(a.getAttribute('href'), location.href); return u.pathname + u.search; };
  const value = el => el.hasAttribute('data-value') ? el.getAttribute('data-value') : el.textContent.trim();
  const rows = t => [...t.querySelectorAll(':scope > tbody > tr')].map(tr => {
    const row = {};
    for (const td of tr.querySelectorAll('td[data-col]')) row[td.getAttribute('data-col')] = value(td);
    const a = tr.querySelector('a[href]');
    if (a) row._href = target(a);
    return row;
  });
  const tables = {}, charts = [];
  for (const t of document.querySelectorAll('table[data-table]')) {
    const fig = t.closest('figure[data-series]');
    if (fig) charts.push({family: fig.getAttribute('data-family'), series: fig.getAttribute('data-series'),
                          device: fig.getAttribute('data-device'), rows: rows(t)});
    else (tables[t.getAttribute('data-table')] ||= []).push(...rows(t));
  }
  const stats = {};
  for (const dd of document.querySelectorAll('dd[data-stat]')) stats[dd.getAttribute('data-stat')] = value(dd);
  const links = attr => Object.fromEntries([...document.querySelectorAll(`a[${attr}]`)]
    .map(a => [a.getAttribute(attr), target(a)]));
  const raw = document.querySelector('pre[data-raw]');
  return {page: document.body ? document.body.getAttribute('data-page') : null, tables, charts, stats,
          vms: [...document.querySelectorAll('a[data-vm]')].map(target),
          nav: links('data-nav'), range: links('data-range'), refresh: links('data-refresh'),
          raw: raw ? raw.textContent : null, scripts: document.querySelectorAll('script').length};
}"""


def launch(p):
    return p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)


def watch(page, now):
    """Records console errors and warnings, page errors, failed requests and 4xx/5xx responses
    into the dict `now["p"]` (the current step's)."""
    page.on("console", lambda m: m.type in ("error", "warning") and now["p"]["console"].append(
        {"type": m.type, "text": m.text, "url": page.url}))
    page.on("pageerror", lambda e: now["p"]["page_errors"].append({"error": str(e), "url": page.url}))
    page.on("requestfailed", lambda r: now["p"]["failed_requests"].append(
        {"url": r.url, "failure": r.failure}))
    page.on("response", lambda r: r.status >= 400 and now["p"]["failed_requests"].append(
        {"url": r.url, "status": r.status}))


def visit(args):
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results, slugs = [], {}
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        now = {}
        watch(page, now)
        for step in args.paths:
            problems = now["p"] = {"console": [], "page_errors": [], "failed_requests": []}
            response = None
            try:
                if step.startswith("click:"):
                    with page.expect_navigation(wait_until="load") as nav:
                        page.locator(step[len("click:"):]).first.click()
                    response = nav.value
                elif step == "back":
                    response = page.go_back(wait_until="load")
                else:
                    response = page.goto(args.base.rstrip("/") + step, wait_until="load")
                doc = page.evaluate(EXTRACT)
            except Exception as e:  # a page that did not load is a result, not a crash
                doc = {"error": str(e)}
            slug = re.sub(r"[^a-z0-9]+", "-", (doc.get("page") or "page").lower())
            slugs[slug] = slugs.get(slug, 0) + 1
            name = slug if slugs[slug] == 1 else f"{slug}-{slugs[slug]}"
            shot = out / f"{name}.png"
            page.screenshot(path=str(shot), full_page=True)
            results.append({"step": step, "url": page.url,
                            "status": response.status if response else None,
                            "screenshot": str(shot), **doc, **problems})
        browser.close()
    json.dump({"pages": results}, sys.stdout)
    print()


def time_loads(args):
    loads, errors = [], []
    with sync_playwright() as p:
        browser = launch(p)
        for _ in range(args.loads):
            context = browser.new_context()  # a fresh context: nothing cached
            page = context.new_page()
            page.on("console", lambda m: m.type == "error" and errors.append(m.text))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(args.url, wait_until="load")
            page.wait_for_function("performance.getEntriesByType('navigation')[0].loadEventEnd > 0")
            loads.append(page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd"))
            context.close()
        browser.close()
    json.dump({"url": args.url, "loads_ms": loads, "console_errors": errors}, sys.stdout)
    print()


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("visit", help="load each path (or click:SELECTOR, back) and print what it shows")
    v.add_argument("--base", required=True, help="http://127.0.0.1:PORT")
    v.add_argument("--out", required=True, help="directory for the screenshots")
    v.add_argument("paths", nargs="+", metavar="PATH")
    v.set_defaults(run=visit)
    t = sub.add_parser("time", help="load a page N times, fresh each time; Navigation Timing loadEventEnd")
    t.add_argument("--url", required=True)
    t.add_argument("--loads", type=int, default=5)
    t.set_defaults(run=time_loads)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
