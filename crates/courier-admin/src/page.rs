//! The status page: one server-rendered HTML document, no build chain, one small script.
//!
//! Owns what a person sees at `/`: what needs attention (with since when and the runbook), per route and
//! partition the lag, failed offsets, the oldest undelivered message's age and end-to-end latency, the
//! failed and quarantined messages with their errors, the destinations (this worker's circuit, Retry-After,
//! the newest error), and the workers. The script swaps in a fresh copy every `admin.refresh` and says
//! so, loudly, when the worker stops answering (the figures on screen are then old); without scripts a
//! `<meta refresh>` reloads the page.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use courier_http::CircuitState;
use courier_worker::DestinationState;

use crate::health::Verdict;
use crate::latency::LatencySummary;
use crate::report::{rfc3339, seconds, since_text, Report};

/// Everything the page shows.
pub struct PageInput<'a> {
    /// This worker's id, `None` while it boots.
    pub worker: Option<&'a str>,
    pub version: &'a str,
    pub uptime: Duration,
    pub health: &'a Verdict,
    pub ready: &'a Verdict,
    /// The report, or why it could not be read; `None` while the worker boots.
    pub report: Option<Result<&'a Report, &'a str>>,
    pub destinations: &'a [DestinationState],
    pub latency: &'a BTreeMap<String, LatencySummary>,
    pub refresh: Duration,
}

/// Escapes text for HTML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A `class`-safe, `id`-safe form of a name.
fn slug(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

const STYLE: &str = "
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1b1f24;background:#f6f7f9}
header,main>section,footer{padding:8px 20px}
header{background:#1b1f24;color:#fff}
h1{font-size:18px;margin:4px 0}
h2{font-size:15px;margin:14px 0 6px}
table{border-collapse:collapse;background:#fff;width:100%}
th,td{border:1px solid #d8dce1;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#eceff3;font-weight:600}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#116329}.bad{color:#b3261e;font-weight:600}
tr.bad td{background:#fdecea}
ul.attention{background:#fff;border:1px solid #e6a6a0;padding:6px 6px 6px 26px;margin:0}
ul.attention li{margin:3px 0}
code{font-size:12px}
#stale{background:#b3261e;color:#fff;padding:8px 20px;font-weight:600}
header .ok{color:#8fe0a6}header .bad{color:#ff9b92}
";

const SCRIPT: &str = "
(function(){
  var every = Number(document.body.dataset.refresh) * 1000, last = Date.now();
  function tick(){
    fetch(location.pathname, {cache: 'no-store'}).then(function(r){
      if (!r.ok) throw new Error('HTTP ' + r.status);
      return r.text();
    }).then(function(text){
      var fresh = new DOMParser().parseFromString(text, 'text/html').getElementById('main');
      if (!fresh) throw new Error('not a status page');
      document.getElementById('main').replaceWith(fresh);
      last = Date.now();
      document.getElementById('stale').hidden = true;
    }).catch(function(e){
      var stale = document.getElementById('stale');
      stale.hidden = false;
      stale.textContent = 'This worker has not answered since ' + new Date(last).toLocaleTimeString() +
        ' (' + e.message + '): everything below is from then.';
    });
  }
  setInterval(tick, every);
})();
";

/// The whole page.
pub fn render(input: &PageInput<'_>) -> String {
    let mut html = String::new();
    let refresh = input.refresh.as_secs().max(1);
    let title = input.worker.unwrap_or("starting");
    let _ = write!(
        html,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>courier: {}</title><noscript><meta http-equiv=\"refresh\" content=\"{refresh}\"></noscript>\
         <style>{STYLE}</style></head><body data-refresh=\"{refresh}\">\
         <div id=\"stale\" role=\"alert\" hidden></div><div id=\"main\">",
        escape(title)
    );
    header(&mut html, input);
    html.push_str("<main>");
    match input.report {
        None => html.push_str(
            "<section><p>The worker is starting: it is connecting to the store and Kafka. This page fills in once it runs.</p></section>",
        ),
        Some(Err(error)) => {
            let _ = write!(
                html,
                "<section id=\"attention\"><h2>Attention</h2><ul class=\"attention\"><li class=\"bad\">Cannot read the store: {}. \
                 Runbook: <code>docs/runbooks/store-unavailable.md</code></li></ul></section>",
                escape(error)
            );
            destinations(&mut html, input, None);
        }
        Some(Ok(report)) => {
            attention(&mut html, report);
            routes(&mut html, report, input.latency);
            failures(&mut html, report);
            destinations(&mut html, input, Some(report));
            workers(&mut html, report, input.worker);
        }
    }
    html.push_str(
        "</main><footer><p>Also: <a href=\"/metrics\">/metrics</a> (Prometheus) · \
         <a href=\"/healthz\">/healthz</a> · <a href=\"/readyz\">/readyz</a> · \
         <a href=\"/status.json\">/status.json</a> (as <code>courier status --json</code>)</p></footer></div>",
    );
    let _ = write!(html, "<script>{SCRIPT}</script></body></html>");
    html
}

fn verdict_class(verdict: &Verdict) -> &'static str {
    if verdict.ok {
        "ok"
    } else {
        "bad"
    }
}

fn header(html: &mut String, input: &PageInput<'_>) {
    let _ = write!(
        html,
        "<header><h1>courier status</h1><p>worker <b id=\"worker\">{}</b> · version {} · up {}</p>\
         <p>health: <span id=\"health\" class=\"{}\">{}</span><br>readiness: <span id=\"readiness\" class=\"{}\">{}</span></p></header>",
        escape(input.worker.unwrap_or("(starting)")),
        escape(input.version),
        seconds(input.uptime),
        verdict_class(input.health),
        escape(&input.health.text),
        verdict_class(input.ready),
        escape(&input.ready.text),
    );
}

fn attention(html: &mut String, report: &Report) {
    let now = report.now_unix();
    let _ = write!(
        html,
        "<section id=\"attention\"><h2>Attention ({})</h2>",
        report.attention.len()
    );
    if report.attention.is_empty() {
        html.push_str("<p class=\"ok\" id=\"all-well\">Nothing needs attention.</p></section>");
        return;
    }
    html.push_str("<ul class=\"attention\">");
    for item in &report.attention {
        let since = item.since_unix.map_or(String::new(), |since| {
            format!(
                " <span class=\"since\">Since {}.</span>",
                escape(&since_text(since, now))
            )
        });
        let _ = write!(
            html,
            "<li data-code=\"{code}\"><b>{code}</b>: {}.{since} Runbook: <code>{}</code></li>",
            escape(item.message.trim_end_matches('.')),
            item.runbook(),
            code = item.code.as_str(),
        );
    }
    html.push_str("</ul></section>");
}

fn optional(value: Option<i64>) -> String {
    value.map_or("?".to_owned(), |v| v.to_string())
}

fn latency_ms(duration: Duration) -> String {
    format!("{} ms", duration.as_millis())
}

fn routes(html: &mut String, report: &Report, latency: &BTreeMap<String, LatencySummary>) {
    html.push_str(
        "<section id=\"routes\"><h2>Routes</h2><table><thead><tr><th>route</th><th>partition</th>\
         <th>topic → destination</th><th>Kafka high</th><th>watermark</th><th>lag</th><th>failed offsets</th>\
         <th>oldest undelivered</th><th>end-to-end p50</th><th>p99</th></tr></thead><tbody>",
    );
    for name in report.route_names() {
        let parts: Vec<_> = report
            .partitions
            .iter()
            .filter(|p| p.route == name)
            .collect();
        let live = report
            .snapshot
            .routes
            .iter()
            .find(|r| r.name == name)
            .and_then(|r| r.planner.as_ref());
        let (p50, p99) = latency.get(&name).map_or(("-".into(), "-".into()), |l| {
            (latency_ms(l.p50), latency_ms(l.p99))
        });
        if parts.is_empty() {
            let _ = write!(
                html,
                "<tr class=\"bad\" id=\"route-{}\"><td>{}</td><td colspan=\"9\">{}</td></tr>",
                slug(&name),
                escape(&name),
                if report.snapshot.routes.iter().any(|r| r.name == name) {
                    "no partitions recorded yet"
                } else {
                    "never started: no worker has recorded this route"
                }
            );
            continue;
        }
        for p in parts {
            let bad = p.failed_offsets > 0 || live.is_none();
            let _ = write!(
                html,
                "<tr id=\"route-{}-{}\"{}><td>{}</td><td class=\"n\">{}</td><td>{} → {}</td><td class=\"n\">{}</td>\
                 <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
                 <td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                slug(&name),
                p.partition,
                if bad { " class=\"bad\"" } else { "" },
                escape(&name),
                p.partition,
                escape(&p.topic),
                escape(&p.destination),
                optional(p.kafka.map(|(_, high)| high)),
                p.watermark,
                optional(p.lag()),
                p.failed_offsets,
                p.oldest_age.map_or("-".into(), seconds),
                p50,
                p99,
            );
        }
    }
    html.push_str(
        "</tbody></table><p>Lag: messages Kafka has that courier has not settled. Failed offsets are settled \
         without delivery and not part of lag. End-to-end latency: Kafka timestamp to the destination's answer, \
         as measured by this worker over the last 5 minutes.</p></section>",
    );
}

fn failures(html: &mut String, report: &Report) {
    let s = &report.snapshot;
    let now = report.now_unix();
    html.push_str("<section id=\"failures\"><h2>Failed and quarantined</h2>");
    if s.failed_partitions.is_empty() && s.quarantine.is_empty() {
        html.push_str("<p class=\"ok\">No failed ranges, no quarantined messages.</p></section>");
        return;
    }
    if !s.failed_partitions.is_empty() {
        html.push_str(
            "<table id=\"failed\"><thead><tr><th>route</th><th>partition</th><th>failed ranges</th><th>offsets</th>\
             <th>since</th><th>newest error</th></tr></thead><tbody>",
        );
        for f in &s.failed_partitions {
            let _ = write!(
                html,
                "<tr class=\"bad\"><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td></tr>",
                escape(&f.route),
                f.partition,
                f.ranges,
                f.offsets,
                escape(&since_text(f.oldest_unix, now)),
                escape(&f.newest_error)
            );
        }
        html.push_str("</tbody></table>");
    }
    if !s.quarantine.is_empty() {
        let total: i64 = s.quarantine.iter().map(|q| q.messages).sum();
        let _ = write!(
            html,
            "<h2>Quarantined messages ({total})</h2><table id=\"quarantined\"><thead><tr><th>route</th><th>partition</th>\
             <th>offset</th><th>answer</th><th>refused</th><th>dead letter</th></tr></thead><tbody>"
        );
        for q in &s.quarantined {
            let _ = write!(
                html,
                "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td class=\"n\">{}×</td><td>{}</td></tr>",
                escape(&q.route),
                q.partition,
                q.offset,
                escape(&q.reason),
                q.times,
                escape(q.dead_letter_topic.as_deref().unwrap_or("-"))
            );
        }
        html.push_str("</tbody></table>");
        if total > s.quarantined.len() as i64 {
            let _ = write!(
                html,
                "<p>… and {} more (<code>courier replay --quarantined --dry-run</code> lists them all).</p>",
                total - s.quarantined.len() as i64
            );
        }
    }
    html.push_str("</section>");
}

fn circuit(state: &CircuitState) -> (String, bool) {
    match state {
        CircuitState::Closed => ("closed".into(), false),
        CircuitState::Open { until, failures } => (
            format!(
                "OPEN after {failures} consecutive failures; one probe in {}",
                seconds(until.saturating_duration_since(std::time::Instant::now()))
            ),
            true,
        ),
        CircuitState::HalfOpen { failures, .. } => (
            format!("half-open after {failures} failures: one probe request decides"),
            true,
        ),
    }
}

fn destinations(html: &mut String, input: &PageInput<'_>, report: Option<&Report>) {
    html.push_str(
        "<section id=\"destinations\"><h2>Destinations</h2><table><thead><tr><th>destination</th><th>url</th>\
         <th>circuit (this worker)</th><th>Retry-After</th><th>routes</th><th>newest error</th></tr></thead><tbody>",
    );
    for d in input.destinations {
        let (circuit, open) = circuit(&d.circuit);
        let deferred =
            report.and_then(|r| r.snapshot.deferred.iter().find(|x| x.destination == d.name));
        let retry_after = match (deferred, d.holding_off_for) {
            (Some(x), _) => format!(
                "wait {} more ({})",
                seconds(Duration::from_millis(u64::try_from(x.wait_ms).unwrap_or(0))),
                x.reason
            ),
            (None, Some(left)) => format!("wait {} more", seconds(left)),
            (None, None) => "-".into(),
        };
        // The newest error of its routes: a retry in progress first, else a range failed for good.
        let error = report.and_then(|r| {
            let now = r.now_unix();
            r.snapshot
                .retrying
                .iter()
                .filter(|x| x.destination == d.name)
                .max_by_key(|x| x.oldest_unix)
                .map(|x| {
                    format!(
                        "{} (retrying {} range(s) since {})",
                        x.newest_error,
                        x.ranges,
                        since_text(x.oldest_unix, now)
                    )
                })
                .or_else(|| {
                    r.snapshot
                        .failed
                        .iter()
                        .find(|f| d.routes.contains(&f.route))
                        .map(|f| format!("{} (failed for good)", f.newest_error))
                })
        });
        let bad = open || error.is_some() || retry_after != "-";
        let _ = write!(
            html,
            "<tr id=\"destination-{}\"{}><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td class=\"error\">{}</td></tr>",
            slug(&d.name),
            if bad { " class=\"bad\"" } else { "" },
            escape(&d.name),
            escape(&d.url),
            escape(&circuit),
            escape(&retry_after),
            escape(&d.routes.join(", ")),
            escape(error.as_deref().unwrap_or("-")),
        );
    }
    html.push_str("</tbody></table></section>");
}

fn workers(html: &mut String, report: &Report, me: Option<&str>) {
    html.push_str(
        "<section id=\"workers\"><h2>Workers</h2><table><thead><tr><th>worker</th><th>host</th><th>pid</th>\
         <th>version</th><th>started</th><th>last heartbeat</th><th>state</th></tr></thead><tbody>",
    );
    let now = report.now_unix();
    for w in &report.snapshot.workers {
        let state = if w.stopped {
            "stopped"
        } else if report.worker_is_live(w) {
            "live"
        } else {
            "NOT LIVE (heartbeat too old)"
        };
        let _ = write!(
            html,
            "<tr{}><td>{}{}</td><td>{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td><td>{} ago</td><td>{}</td></tr>",
            if state.starts_with("NOT") { " class=\"bad\"" } else { "" },
            escape(&w.id),
            if Some(w.id.as_str()) == me { " (this one)" } else { "" },
            escape(&w.host),
            w.pid,
            escape(&w.version),
            rfc3339(now - w.started_secs_ago),
            seconds(Duration::from_secs(u64::try_from(w.heartbeat_secs_ago).unwrap_or(0))),
            state
        );
    }
    html.push_str("</tbody></table></section>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_the_network_cannot_become_markup() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        assert_eq!(slug("orders.v2/eu"), "orders_v2_eu");
    }

    #[test]
    fn a_booting_worker_shows_that_it_is_starting() {
        let verdict = Verdict {
            ok: true,
            text: "starting".into(),
        };
        let page = render(&PageInput {
            worker: None,
            version: "0.1.0",
            uptime: Duration::from_secs(3),
            health: &verdict,
            ready: &verdict,
            report: None,
            destinations: &[],
            latency: &BTreeMap::new(),
            refresh: Duration::from_secs(5),
        });
        assert!(page.contains("The worker is starting"), "{page}");
        assert!(page.contains("data-refresh=\"5\""));
    }
}
