//! The coordinator's status page (`GET /` of its HTTP port): plain server-rendered HTML from the
//! same snapshot `GetStatus` answers with, and a few lines of JS that fetch the page again every
//! two seconds and swap its `<main>` in place. No front-end build chain.

use std::fmt::Write as _;

use capfilt_proto::v1;

use crate::bootstrap::record::RoundRecord;

pub use capfilt_report::html::escape;
use capfilt_report::html::kept_of;

fn fig(m: &std::collections::BTreeMap<String, f64>, key: &str) -> String {
    m.get(key).map_or("–".into(), |v| format!("{v:.3}"))
}

fn ago(now_ms: u64, then_ms: u64) -> String {
    if then_ms == 0 {
        return "never".into();
    }
    let s = now_ms.saturating_sub(then_ms) as f64 / 1000.0;
    if s < 60.0 {
        format!("{s:.1}s ago")
    } else {
        format!("{:.0}m ago", s / 60.0)
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}\
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}\
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}\
th{background:#f3f3f3}td.l,th.l{text-align:left}.bar{background:#eee;width:24em;height:1em;display:inline-block;vertical-align:middle}\
.bar span{display:block;height:100%;background:#3a7}.err{color:#a22}.muted{color:#777}\
.pill{display:inline-block;padding:.1em .6em;border-radius:1em;background:#e8f0fe;margin-right:.4em}";

const REFRESH_JS: &str = "setInterval(async()=>{try{const r=await fetch(location.pathname,{cache:'no-store'});\
if(!r.ok)return;const d=new DOMParser().parseFromString(await r.text(),'text/html');\
document.querySelector('main').replaceWith(d.querySelector('main'));}catch(e){}},2000);";

/// Renders the page. `ready` is the readiness answer; `reports` whether round reports can be
/// opened through this server (`/rounds/NNNN/report/`).
pub fn render(s: &v1::GetStatusResponse, ready: &Result<(), String>, reports: bool) -> String {
    let now = crate::registry::unix_ms();
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=utf-8><title>capfilt coordinator</title>\
         <style>{STYLE}</style></head><body><main>"
    );
    let _ = write!(
        h,
        "<h1>capfilt coordinator</h1><p><span class=pill id=ready>{}</span>\
         <span class=muted>instance {} · up {:.0}s · refreshes every 2 s</span></p>",
        match ready {
            Ok(()) => "ready".to_string(),
            Err(e) => format!("not ready: {}", escape(e)),
        },
        escape(&s.coordinator_instance),
        s.uptime_ms as f64 / 1000.0,
    );
    run_section(&mut h, s, reports);
    round_section(&mut h, s);
    workers_section(&mut h, s, now);
    quarantine_section(&mut h, s);
    let _ = write!(h, "</main><script>{REFRESH_JS}</script></body></html>");
    h
}

fn run_section(h: &mut String, s: &v1::GetStatusResponse, reports: bool) {
    let Some(run) = &s.run else {
        h.push_str("<h2>Run</h2><p class=muted>no bootstrap run: a bare coordinator</p>");
        return;
    };
    let _ = write!(
        h,
        "<h2>Run</h2><p><span class=pill id=phase>phase: {}</span><span class=pill>round {} of {}</span>\
         <span class=pill id=run-status>{}</span><span class=muted>trainer: {}</span></p>",
        escape(&run.phase),
        run.round,
        run.rounds_requested,
        escape(&run.status),
        escape(&run.trainer)
    );
    if !run.error.is_empty() {
        let _ = write!(h, "<p class=err>{}</p>", escape(&run.error));
    }
    let rounds: Vec<RoundRecord> = serde_json::from_str(&run.rounds_json).unwrap_or_default();
    h.push_str(
        "<table id=rounds><tr><th>round</th><th>rows in</th><th>rejected</th><th>web kept</th>\
         <th>synthetic kept</th><th>quarantined</th><th>img/s</th><th>captioner exact</th>\
         <th>filter AUC</th><th class=l>promotion</th><th class=l>report</th></tr>",
    );
    for r in &rounds {
        let t = &r.totals;
        let promotion = match &r.promotion {
            None => "–".to_string(),
            Some(p) => format!(
                "{} (exact {:.3}→{:.3}, AUC {:.3}→{:.3}, {:.0}s)",
                if p.promoted { "promoted" } else { "refused" },
                p.captioner_exact_match.0,
                p.captioner_exact_match.1,
                p.filter_auc.0,
                p.filter_auc.1,
                p.training_seconds
            ),
        };
        let report = if reports {
            format!(
                "<a href=\"/rounds/{:04}/report/index.html\">report</a>",
                r.round
            )
        } else {
            "–".into()
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=l>{}</td><td class=l>{}</td></tr>",
            r.round,
            t.rows_in,
            t.rows_rejected,
            kept_of(t.web_kept, t.web_texts),
            kept_of(t.synthetic_kept, t.synthetic_texts),
            r.quarantined,
            r.images_per_second
                .map_or("–".into(), |v| format!("{v:.1}")),
            fig(&r.captioner_eval, "exact_match"),
            fig(&r.filter_eval, "auc"),
            escape(&promotion),
            report
        );
    }
    if rounds.is_empty() {
        h.push_str("<tr><td class=l colspan=11>no round finished yet</td></tr>");
    }
    h.push_str("</table>");
}

fn round_section(h: &mut String, s: &v1::GetStatusResponse) {
    if s.round == 0 {
        h.push_str("<h2>Current round</h2><p class=muted id=no-round>no round is being served</p>");
        return;
    }
    let c = s.shards.unwrap_or_default();
    let total = c.pending + c.leased + c.committed + c.quarantined;
    let frac = if s.rows_total == 0 {
        0.0
    } else {
        s.rows_done as f64 / s.rows_total as f64
    };
    let _ = write!(
        h,
        "<h2>Round {}</h2><p><span class=bar><span style=\"width:{:.1}%\"></span></span> \
         {} / {} rows ({:.1}%)</p>\
         <table id=shard-counts><tr><th>pending</th><th>leased</th><th>committed</th>\
         <th>quarantined</th><th>total</th></tr><tr><td id=shards-pending>{}</td>\
         <td id=shards-leased>{}</td><td id=shards-committed>{}</td>\
         <td id=shards-quarantined>{}</td><td id=shards-total>{}</td></tr></table>",
        s.round,
        100.0 * frac,
        s.rows_done,
        s.rows_total,
        100.0 * frac,
        c.pending,
        c.leased,
        c.committed,
        c.quarantined,
        total
    );
    let leased: Vec<&v1::ShardStatus> = s
        .shard_list
        .iter()
        .filter(|x| x.state() == v1::ShardState::Leased)
        .collect();
    if !leased.is_empty() {
        h.push_str(
            "<h2>Leased shards</h2><table id=leased><tr><th class=l>shard</th><th class=l>worker</th>\
             <th>attempt</th><th class=l>progress</th></tr>",
        );
        for x in leased {
            let f = if x.rows_total == 0 {
                0.0
            } else {
                x.rows_done as f64 / x.rows_total as f64
            };
            let _ = write!(
                h,
                "<tr><td class=l>{}</td><td class=l>{}</td><td>{}</td><td class=l>\
                 <span class=bar><span style=\"width:{:.1}%\"></span></span> {} / {}</td></tr>",
                escape(&x.shard_id),
                escape(&x.worker_id),
                x.attempt,
                100.0 * f,
                x.rows_done,
                x.rows_total
            );
        }
        h.push_str("</table>");
    }
}

fn workers_section(h: &mut String, s: &v1::GetStatusResponse, now: u64) {
    let _ = write!(
        h,
        "<h2>Workers ({})</h2><table id=workers><tr><th class=l>worker</th><th class=l>state</th>\
         <th class=l>device</th><th>slots</th><th>leases</th><th>rows done</th><th>rows/s</th>\
         <th class=l>last heartbeat</th></tr>",
        s.workers.len()
    );
    for w in &s.workers {
        let device = w.device.as_ref().map_or("?".to_string(), |d| {
            if d.kind() == v1::DeviceKind::Cuda {
                format!("cuda:{} {}", d.index, d.description)
            } else {
                "cpu".into()
            }
        });
        let _ = write!(
            h,
            "<tr><td class=l>{}</td><td class=l>{}</td><td class=l>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{:.1}</td><td class=l>{}</td></tr>",
            escape(&w.worker_id),
            escape(&w.state),
            escape(&device),
            w.slots,
            w.leases,
            w.rows_done,
            w.rows_per_s,
            ago(now, w.last_seen_unix_ms)
        );
    }
    if s.workers.is_empty() {
        h.push_str("<tr><td class=l colspan=8>no worker has registered</td></tr>");
    }
    h.push_str("</table>");
}

fn quarantine_section(h: &mut String, s: &v1::GetStatusResponse) {
    let bad: Vec<&v1::ShardStatus> = s
        .shard_list
        .iter()
        .filter(|x| x.state() == v1::ShardState::Quarantined)
        .collect();
    if bad.is_empty() {
        return;
    }
    h.push_str(
        "<h2>Quarantined shards</h2><table id=quarantined><tr><th class=l>shard</th>\
         <th>attempts</th><th class=l>last error</th></tr>",
    );
    for x in bad {
        let _ = write!(
            h,
            "<tr><td class=l>{}</td><td>{}</td><td class=\"l err\">{}</td></tr>",
            escape(&x.shard_id),
            x.attempt,
            escape(&x.last_error)
        );
    }
    h.push_str("</table>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_html_needs() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn renders_counts_workers_and_quarantined_errors() {
        let s = v1::GetStatusResponse {
            coordinator_instance: "abc".into(),
            round: 2,
            shards: Some(v1::ShardCountsByState {
                pending: 1,
                leased: 1,
                committed: 3,
                quarantined: 1,
            }),
            rows_total: 600,
            rows_done: 350,
            workers: vec![v1::WorkerStatus {
                worker_id: "w<1>".into(),
                state: "working".into(),
                slots: 2,
                leases: 1,
                ..Default::default()
            }],
            shard_list: vec![
                v1::ShardStatus {
                    shard_id: "s-bad".into(),
                    state: v1::ShardState::Quarantined.into(),
                    attempt: 3,
                    last_error: "decode <boom>".into(),
                    ..Default::default()
                },
                v1::ShardStatus {
                    shard_id: "s-run".into(),
                    state: v1::ShardState::Leased.into(),
                    worker_id: "w<1>".into(),
                    rows_done: 50,
                    rows_total: 100,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let page = render(&s, &Err("no round opened yet".into()), false);
        assert!(page.contains("<td id=shards-committed>3</td>"), "{page}");
        assert!(page.contains("<td id=shards-total>6</td>"));
        assert!(page.contains("350 / 600 rows (58.3%)"));
        assert!(page.contains("w&lt;1&gt;"), "worker ids are escaped");
        assert!(page.contains("decode &lt;boom&gt;"), "errors are escaped");
        assert!(page.contains("not ready: no round opened yet"));
        assert!(page.contains("id=leased"));
        assert!(page.contains("no bootstrap run"));
    }
}
